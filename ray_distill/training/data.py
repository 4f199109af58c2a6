"""SFT data preparation, pure functions (no Ray): encode chat rows into ``input_ids``/``labels``,
plan length-bucketed batches shared by every data-parallel worker, collate, preflight.

    ex = encode_example(tokenizer, row["messages"], max_seq_len=256)
    plan = plan_batches([len(e["input_ids"]) for e in examples], batch_size=32, world_size=2, seed=0)
    mine = [shard_of(batch, rank, world_size) for batch in plan]      # this worker's micro-batches

Labels are ``-100`` on every token that is not written by the assistant, so the loss covers the
assistant's tokens and the end-of-turn token only.
"""

from __future__ import annotations

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
    """Templates without generation markers: everything after the rendered prompt
    (``messages[:-1]`` + generation prompt) is the final assistant turn and is supervised."""
    ids = list(_tokenize_chat(tokenizer, messages)["input_ids"])
    if not messages or messages[-1].get("role") != "assistant":
        return ids, [0] * len(ids)
    prefix = list(_tokenize_chat(tokenizer, messages[:-1], add_generation_prompt=True)["input_ids"])
    if ids[: len(prefix)] != prefix:
        raise ValueError(
            "chat template renders the prompt differently with and without the final assistant turn; "
            "add {% generation %} markers to the template"
        )
    return ids, [0] * len(prefix) + [1] * (len(ids) - len(prefix))


def plan_batches(
    lengths: list[int], batch_size: int, world_size: int, seed: int, window: int = 50
) -> list[list[int]]:
    """Global batches of example indices, grouped by length so that little padding is needed.

    Indices are shuffled, sorted by length inside windows of ``window`` batches, cut into batches of
    ``batch_size`` and the batch order shuffled again. Every index appears exactly once. A short
    last batch with fewer than ``world_size`` examples is merged into the one before it, so every
    worker gets at least one example per step.
    """
    if len(lengths) < world_size:
        raise ValueError(f"{len(lengths)} training examples cannot feed {world_size} workers")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * window
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    short = [b for b in batches if len(b) < world_size]
    batches = [b for b in batches if len(b) >= world_size]
    for b in short:  # at most one short batch per window; fold it into a full one
        batches[-1] = batches[-1] + b if batches else b
    rng.shuffle(batches)
    return batches


def shard_of(batch: list[int], rank: int, world_size: int) -> list[int]:
    """This worker's micro-batch of a global batch (strided, so lengths stay balanced)."""
    return batch[rank::world_size]


def non_pad_fraction(lengths: list[int], micro_batches: list[list[int]]) -> float:
    """Real tokens / padded tokens when each micro-batch is padded to its longest sequence."""
    real = sum(lengths[i] for mb in micro_batches for i in mb)
    padded = sum(max(lengths[i] for i in mb) * len(mb) for mb in micro_batches if mb)
    return real / padded if padded else 1.0


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch to its longest sequence; padded labels are ``-100``."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        attn[row, :n] = 1
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def supervised_count(example: dict) -> int:
    """Tokens that carry loss (a label at position i is predicted from position i-1)."""
    return sum(1 for t in example["labels"][1:] if t != IGNORE)


def preflight(tokenizer, rows: list[dict], max_seq_len: int, n: int = 8) -> dict:
    """Encode the first ``n`` rows and report what the loss will see.

    Returns ``supervised_fraction`` (share of tokens with a label), ``truncation_rate`` and
    ``example`` (the rendered text of the first row) with ``example_supervised`` (the text its
    loss covers). Raises ``ValueError`` when no token would be supervised.
    """
    from ray_distill.columns import MESSAGES

    if not rows:
        raise ValueError("preflight: no training rows")
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
