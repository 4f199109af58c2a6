"""The SFT loss from hidden states, in chunks: full-vocabulary fp32 logits of a long sequence never exist
at once (``tokens x vocab x 4`` bytes: 2.4 GB for 4k tokens of a 152k vocabulary).

    loss_sum = chunked_token_loss_sum(hidden[:, :-1], lm_head.weight, None, labels[:, 1:], chunk_tokens=1024)

Only the supervised positions are projected at all (prompts carry ``-100``), and each chunk of them is
projected, cast to fp32 and reduced under activation checkpointing, so the backward pass recomputes one
chunk's logits at a time instead of keeping every chunk's. The result is the summed cross-entropy, equal
to ``F.cross_entropy(full_logits.float(), targets, ignore_index=-100, reduction="sum")`` up to float
summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ray_distill.training.data import IGNORE


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                scale: float | None, softcap: float | None) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias)
    if scale is not None:
        logits = logits * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def chunked_token_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           targets: torch.Tensor, chunk_tokens: int | None, scale: float | None = None,
                           softcap: float | None = None) -> torch.Tensor:
    """Summed next-token cross-entropy of ``hidden`` (``[..., H]``, the positions that predict ``targets``)
    through the output projection ``weight`` (``[V, H]``) and ``bias``; ``targets`` equal to ``-100`` are
    ignored. ``chunk_tokens`` None computes all supervised positions at once. ``scale`` and ``softcap``
    reproduce models whose logits are scaled (Cohere's ``logit_scale``) or soft-capped (Gemma's
    ``final_logit_softcapping``)."""
    hidden = hidden.reshape(-1, hidden.size(-1))
    targets = targets.reshape(-1)
    keep = targets != IGNORE
    hidden, targets = hidden[keep], targets[keep]
    if targets.numel() == 0:
        return hidden.sum() * 0.0  # keeps the graph (and FSDP's/DDP's gradient hooks) connected
    if chunk_tokens is None or targets.numel() <= chunk_tokens:
        return _chunk_loss(hidden, weight, bias, targets, scale, softcap)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), chunk_tokens):
        end = start + chunk_tokens
        total = total + checkpoint(_chunk_loss, hidden[start:end], weight, bias, targets[start:end], scale, softcap,
                                   use_reentrant=False)
    return total
