"""SFT data preparation, pure functions (no Ray): encode chat rows into ``input_ids``/``labels``,
plan batches shared by every data-parallel worker, pack or pad them into rows, collate, preflight.

    ex = encode_example(tokenizer, row["messages"], max_seq_len=256)
    plan = plan_batches(lengths, batch_size=32, min_size=2, seed=0)            # one batch per optimiser step
    for micro in micro_batches(plan[0], rank=0, world_size=2, accum_steps=1):  # this worker's share
        rows = layout(lengths, micro, packing=True, capacity=256)             # several examples per row
        inputs = collate([[examples[i] for i in row] for row in rows], pad_id=0)

Labels are ``-100`` on every token that is not written by the assistant, so the loss covers the
assistant's tokens and the end-of-turn token only.
"""

from __future__ import annotations

import heapq
import random
import re

import torch

IGNORE = -100
_GENERATION_RE = re.compile(r"{%-?\s*generation\s*-?%}")


def has_generation_markers(tokenizer) -> bool:
    """True when the chat template marks assistant text with ``{% generation %}`` blocks."""
    return bool(tokenizer.chat_template) and bool(_GENERATION_RE.search(tokenizer.chat_template))


def encode_example(tokenizer, messages: list[dict], max_seq_len: int) -> dict:
    """Render one conversation with the tokenizer's chat template and mask the prompt.

    Returns ``{"input_ids", "labels", "truncated"}``; ``labels[i]`` is ``input_ids[i]`` on assistant
    tokens (and the EOS the template puts after them), ``-100`` elsewhere. Sequences longer than
    ``max_seq_len`` are cut at the end and flagged ``truncated``.
    """
    if has_generation_markers(tokenizer):
        ids, mask = _render_with_mask(tokenizer, messages)
    else:
        ids, mask = _render_with_prefix(tokenizer, messages)
    labels = [t if m else IGNORE for t, m in zip(ids, mask)]
    truncated = len(ids) > max_seq_len
    return {"input_ids": ids[:max_seq_len], "labels": labels[:max_seq_len], "truncated": truncated}


def _tokenize_chat(tokenizer, messages: list[dict], **kwargs) -> dict:
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)


def _render_with_mask(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    out = _tokenize_chat(tokenizer, messages, return_assistant_tokens_mask=True)
    return list(out["input_ids"]), list(out["assistant_masks"])


def _render_with_prefix(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Templates without generation markers: what follows the rendered prompt (``messages[:-1]`` +
    generation prompt) is the final assistant turn; it is supervised up to and including its end token
    (the end-of-sequence token; what a template writes after it, e.g. ChatML's newline, is not)."""
    ids = list(_tokenize_chat(tokenizer, messages)["input_ids"])
    if not messages or messages[-1].get("role") != "assistant":
        return ids, [0] * len(ids)
    prefix = list(_tokenize_chat(tokenizer, messages[:-1], add_generation_prompt=True)["input_ids"])
    if ids[: len(prefix)] != prefix:
        raise ValueError(
            "chat template renders the prompt differently with and without the final assistant turn; "
            "add {% generation %} markers to the template"
        )
    end = len(ids)
    eos = tokenizer.eos_token_id
    if eos is not None and eos in ids[len(prefix):]:
        end = len(ids) - ids[::-1].index(eos)  # just after the turn's last end token
    return ids, [0] * len(prefix) + [1] * (end - len(prefix)) + [0] * (len(ids) - end)


def check_reasoning_kept(tokenizer, messages: list[dict]) -> None:
    """Raise :class:`ConfigError` when the chat template drops the ``<think>…</think>`` reasoning of the
    final assistant turn (R1-Distill templates keep only the answer of assistant turns they render)."""
    from ray_distill.config import ConfigError
    from ray_distill.models import THINK_CLOSE, THINK_OPEN

    content = messages[-1]["content"] if messages and messages[-1].get("role") == "assistant" else ""
    if THINK_CLOSE not in content:
        return
    reasoning = content.split(THINK_CLOSE, 1)[0].split(THINK_OPEN)[-1].strip()
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    if THINK_CLOSE not in text or (reasoning and reasoning not in text):
        raise ConfigError(
            "student chat template drops the <think>...</think> reasoning of assistant turns, so training would "
            "teach answers without reasoning; set student.chat_template to a training template that renders the "
            "assistant content as it is (a Jinja string or file)")


def plan_batches(
    lengths: list[int], batch_size: int, min_size: int, seed: int, window: int = 50, bucket: bool = True
) -> list[list[int]]:
    """Global batches of example indices (one optimiser step each), shuffled with ``seed``.

    With ``bucket``, indices are sorted by length inside windows of ``window`` batches before they are
    cut into batches (little padding without packing); the batch order is shuffled again. Every index
    appears exactly once. A short last batch with fewer than ``min_size`` examples (workers x
    accumulation steps) is merged into another, so every micro-step of every worker gets an example.
    """
    if len(lengths) < min_size:
        raise ValueError(f"{len(lengths)} training examples cannot feed {min_size} micro-batches (workers x grad_accum_steps)")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * window if bucket else len(order)
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        if bucket:
            chunk = sorted(chunk, key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    short = [b for b in batches if len(b) < min_size]
    batches = [b for b in batches if len(b) >= min_size]
    for b in short:  # at most one short batch per window; fold it into a full one
        batches[-1] = batches[-1] + b if batches else b
    rng.shuffle(batches)
    return batches


def micro_batches(batch: list[int], rank: int, world_size: int, accum_steps: int) -> list[list[int]]:
    """This worker's ``accum_steps`` micro-batches of a global batch (strided, so lengths stay balanced)."""
    mine = batch[rank::world_size]
    return [mine[j::accum_steps] for j in range(accum_steps)]


def rank_share(batches: list[list[int]], rank: int, world_size: int) -> set[int]:
    """The example indices worker ``rank`` trains on in ``batches`` (the union of its micro-batches)."""
    return {i for batch in batches for i in batch[rank::world_size]}


def pack_rows(lengths: list[int], items: list[int], capacity: int) -> list[list[int]]:
    """Split ``items`` (example indices) into the fewest rows of at most ``capacity`` tokens, with
    near-equal row lengths (longest example first onto the shortest row), so a batch of rows padded to
    its longest row is almost all real tokens."""
    if any(lengths[i] > capacity for i in items):
        raise ValueError(f"an example is longer than the packing capacity {capacity}")
    order = sorted(items, key=lambda i: -lengths[i])
    n = max(1, -(-sum(lengths[i] for i in items) // capacity))
    while True:
        heap = [(0, r) for r in range(n)]
        rows: list[list[int]] = [[] for _ in range(n)]
        for i in order:
            load, r = heapq.heappop(heap)
            rows[r].append(i)
            heapq.heappush(heap, (load + lengths[i], r))
        if max(load for load, _ in heap) <= capacity:
            return [r for r in rows if r]
        n += 1


def layout(lengths: list[int], items: list[int], packing: bool, capacity: int) -> list[list[int]]:
    """Rows of a micro-batch: packed (several examples per row) or one example per row."""
    return pack_rows(lengths, items, capacity) if packing else [[i] for i in items]


def padded_size(lengths: list[int], rows: list[list[int]]) -> int:
    """Tokens of a batch of ``rows`` padded to its longest row."""
    return len(rows) * max(sum(lengths[i] for i in row) for row in rows) if rows else 0


def non_pad_fraction(lengths: list[int], batches_of_rows: list[list[list[int]]]) -> float:
    """Real tokens / computed tokens when each batch of rows is padded to its longest row."""
    real = sum(lengths[i] for rows in batches_of_rows for row in rows for i in row)
    padded = sum(padded_size(lengths, rows) for rows in batches_of_rows)
    return real / padded if padded else 1.0


def collate(rows: list[list[dict]], pad_id: int, one_row: bool = False) -> dict[str, torch.Tensor]:
    """Concatenate the examples of each row and right-pad the rows to the longest one (``one_row``: all
    rows concatenated into a single row, no padding: the padding-free layout of varlen flash attention,
    which Hugging Face models recognise only at batch size 1).

    ``position_ids`` restart at 0 for every example (and for the padding), which is how Hugging Face
    models recognise packed sequences: attention stays inside each example (a block-diagonal causal
    mask, or varlen flash attention). The first label of every example is ``-100`` (it would be
    predicted from the previous example's last token); padding carries ``-100`` too.
    """
    if one_row:
        rows = [[e for row in rows for e in row]]
    width = max(sum(len(e["input_ids"]) for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for e in row:
            n = len(e["input_ids"])
            ids[r, at : at + n] = torch.tensor(e["input_ids"])
            labels[r, at + 1 : at + n] = torch.tensor(e["labels"][1:])
            positions[r, at : at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(width - at)  # the padding is a sequence of its own
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def supervised_count(example: dict) -> int:
    """Tokens that carry loss (a label at position i is predicted from position i-1)."""
    return sum(1 for t in example["labels"][1:] if t != IGNORE)


def preflight(tokenizer, rows: list[dict], max_seq_len: int, n: int = 8) -> dict:
    """Encode the first ``n`` rows and report what the loss will see.

    Returns ``supervised_fraction`` (share of tokens with a label), ``truncation_rate`` and
    ``example`` (the rendered text of the first row) with ``example_supervised`` (the text its
    loss covers). Raises ``ValueError`` when no token would be supervised, ``ConfigError`` when the
    chat template drops the rows' ``<think>`` reasoning (:func:`check_reasoning_kept`).
    """
    from ray_distill.columns import MESSAGES

    if not rows:
        raise ValueError("preflight: no training rows")
    for r in rows[:n]:
        check_reasoning_kept(tokenizer, r[MESSAGES])
    encoded = [encode_example(tokenizer, r[MESSAGES], max_seq_len) for r in rows[:n]]
    total = sum(len(e["input_ids"]) for e in encoded)
    supervised = sum(supervised_count(e) for e in encoded)
    if supervised == 0:
        raise ValueError(
            f"preflight: no supervised token in the first {len(encoded)} rows "
            "(no assistant turn, or the chat template/mask drops it, or max_seq_len cuts it off)"
        )
    first = encoded[0]
    return {
        "supervised_fraction": supervised / total,
        "truncation_rate": sum(e["truncated"] for e in encoded) / len(encoded),
        "example": tokenizer.decode(first["input_ids"]),
        "example_supervised": tokenizer.decode([t for t in first["labels"] if t != IGNORE]),
    }
