"""Corpus statistics: response lengths, and the per-token predictive entropy of a corpus under a model.

    length_stats(texts, tokenize=lambda t: tok(t)["input_ids"])   # {"count", "mean", "p50", ...}
    token_entropy_under_model("/path/to/student", completions, questions)   # bits per token

The entropy is the paper's teacher diagnostic (lower-entropy teacher corpora were learned better:
0.477 vs 0.705 bits): the mean, over every assistant token of the corpus, of the entropy of the
model's next-token distribution at that position. Batched, ``torch.no_grad``; where the model is loaded
(:func:`entropy_load_plan`): on CPU in float32 (the tiny students), on the GPUs of the Ray task that runs it
(the student's serving resources, ``curation.smoke_stage.student_entropy``) in 16-bit, sharded over all of them.

vLLM's prompt logprobs are not used: vLLM returns at most the top-k (``max_logprobs``, 20 by default)
log-probabilities of each prompt position, and the entropy needs the whole next-token distribution (the
mass outside the top-k, spread over a 150k vocabulary, is unknown), so they give neither the entropy nor a
bound close enough to rank teachers by.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

_LOGIT_BUDGET = 2**27  # max floats of logits per forward batch (512 MB fp32)
_MAX_BATCH = 16


def length_stats(texts: Sequence[str], tokenize: Callable[[str], Sequence[int]]) -> dict[str, float]:
    """Token-length summary: count, mean, std, min, p50, p90, p99, max (NaN stats for no texts)."""
    lengths = np.array([len(tokenize(t)) for t in texts], dtype=float)
    if lengths.size == 0:
        return {"count": 0, **{k: float("nan") for k in ("mean", "std", "min", "p50", "p90", "p99", "max")}}
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
    return {
        "count": int(lengths.size),
        "mean": float(lengths.mean()),
        "std": float(lengths.std()),
        "min": float(lengths.min()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(lengths.max()),
    }


def token_entropy_under_model(model_path: str, texts: list[str], prompts: list[str], max_rows: int = 256,
                              chat_template: str | None = None) -> float:
    """Mean predictive entropy (bits) of the causal LM at ``model_path`` over the assistant tokens.

    ``texts[i]`` is the assistant response to the user turn ``prompts[i]``; both are rendered with the
    model's chat template (plain concatenation when it has none). Rows longer than the model's
    context are truncated from the right. With more than ``max_rows`` rows, an evenly spaced subset
    is used. The mean is token-weighted (long responses count more). ``model_path`` is a model
    reference (``ray_distill.models``); ``chat_template`` replaces its own.
    """
    return token_entropies_under_model(model_path, {"": (texts, prompts)}, max_rows, chat_template)[""]


def token_entropies_under_model(model_path: str, corpora: dict[str, tuple[list[str], list[str]]],
                                max_rows: int = 256, chat_template: str | None = None) -> dict[str, float]:
    """:func:`token_entropy_under_model` of every corpus (name -> (texts, prompts)), the model loaded once."""
    from ray_distill.models import load_tokenizer

    for texts, prompts in corpora.values():
        if len(texts) != len(prompts):
            raise ValueError(f"token_entropy_under_model: {len(texts)} texts but {len(prompts)} prompts")
        if not texts:
            raise ValueError("token_entropy_under_model: no texts")
    tokenizer = load_tokenizer(model_path, chat_template)
    model = _load(model_path, entropy_load_plan(torch.cuda.device_count(), _checkpoint_dtype(model_path)))
    max_len = int(getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = {}
    for name, (texts, prompts) in corpora.items():
        rows = [encode_turns(tokenizer, prompts[i], texts[i], max_len) for i in _subset(len(texts), max_rows)]
        rows = [r for r in rows if r[1] < len(r[0])]  # keep rows with at least one assistant token
        if not rows:
            raise ValueError("token_entropy_under_model: no assistant tokens fit the model context")
        total_bits, total_tokens = 0.0, 0
        for batch in _batches(rows, vocab=model.config.vocab_size):
            bits, count = _batch_entropy(model, batch, pad_id)
            total_bits, total_tokens = total_bits + bits, total_tokens + count
        if total_tokens == 0:
            raise ValueError("token_entropy_under_model: no assistant token could be scored")
        logger.info("entropy under %s%s: %.4f bits/token over %d tokens, %d rows", model_path,
                    f" of {name}" if name else "", total_bits / total_tokens, total_tokens, len(rows))
        out[name] = total_bits / total_tokens
    return out


def entropy_load_plan(num_gpus: int, checkpoint_dtype: str | None) -> dict:
    """How :func:`token_entropies_under_model` loads the model, given the CUDA GPUs this process sees (a Ray
    task sees the ones it requested: the student's serving resources) and the dtype the checkpoint's config
    names. No GPU: float32 on the CPU, as before (the tiny students; their numbers do not change). GPUs: the
    checkpoint's 16-bit dtype (bf16 for an fp32 or unnamed one: never a full fp32 copy on a GPU), layers
    spread over every visible GPU (``device_map="auto"``), so a 32B student needs ~65 GB across the
    serving GPUs instead of 131 GB on one device."""
    if num_gpus == 0:
        return {"dtype": torch.float32, "device_map": None}
    half = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(str(checkpoint_dtype).removeprefix("torch."))
    return {"dtype": half or torch.bfloat16, "device_map": "auto"}


def _checkpoint_dtype(model_path: str) -> str | None:
    from transformers import AutoConfig

    from ray_distill.models import loadable

    with loadable(model_path) as (name, revision):
        dtype = AutoConfig.from_pretrained(name, revision=revision).dtype
    return None if dtype is None else str(dtype)


def _load(model_path: str, plan: dict):
    from transformers import AutoModelForCausalLM

    from ray_distill.models import loadable

    with loadable(model_path) as (name, revision):
        model = AutoModelForCausalLM.from_pretrained(name, revision=revision, **plan)
    logger.info("entropy: %s loaded in %s on %s", model_path, plan["dtype"], plan["device_map"] or "cpu")
    return model.eval()


def encode_turns(tokenizer, prompt: str, text: str, max_len: int) -> tuple[list[int], int]:
    """Token ids of (user ``prompt``, assistant ``text``) and the index of the first assistant token."""
    if tokenizer.chat_template:
        user = [{"role": "user", "content": prompt}]
        head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": text}], tokenize=False)
        if not full.startswith(head):
            raise ValueError("chat template: the rendered prompt is not a prefix of the rendered conversation")
        tail = full[len(head):]
    else:
        head, tail = prompt, text
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    return (head_ids + tail_ids)[:max_len], len(head_ids)


def _subset(n: int, max_rows: int) -> list[int]:
    if n <= max_rows:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, max_rows).round().astype(int).tolist()))


def _batches(rows: list[tuple[list[int], int]], vocab: int):
    """Length-sorted batches whose padded logits stay under the budget (one row minimum)."""
    rows = sorted(rows, key=lambda r: len(r[0]))
    batch: list[tuple[list[int], int]] = []
    for row in rows:
        longest = len(row[0])  # rows are sorted, so the newest row is the longest
        if batch and ((len(batch) + 1) * longest * vocab > _LOGIT_BUDGET or len(batch) >= _MAX_BATCH):
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


@torch.no_grad()
def _batch_entropy(model, batch: list[tuple[list[int], int]], pad_id: int) -> tuple[float, int]:
    """(sum of entropies in bits, number of scored tokens) for one right-padded batch."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    scored = torch.zeros((len(batch), width), dtype=torch.bool)  # positions whose *next* token is assistant
    for b, (ids, start) in enumerate(batch):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention[b, : len(ids)] = 1
        scored[b, max(start - 1, 0) : len(ids) - 1] = True
    device = model.get_input_embeddings().weight.device  # the first layer's GPU under device_map="auto"
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1) / math.log(2)
    return float(entropy[scored.to(logits.device)].sum()), int(scored.sum())
