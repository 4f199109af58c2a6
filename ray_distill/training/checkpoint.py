"""Checkpoint and export of the SFT loop, the same for DDP and FSDP: full (unsharded) state dicts
gathered with ``torch.distributed.checkpoint.state_dict``, written by rank 0 in the
``save_pretrained`` layout plus the optimizer, scheduler and loop state.

    save_checkpoint(tmp, model, base, tokenizer, optimizer, scheduler, state, rank)   # every rank calls
    load_optimizer(ckpt_dir, model, optimizer, scheduler)                             # after wrapping
    save_model(model, base, tokenizer, "s3://bucket/student", rank)                   # every rank calls

``model`` is the wrapped module (DDP, FSDP or the plain one), ``base`` the Hugging Face model inside it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field

import fsspec
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from ray_distill.data.fs import is_local, put_dir

OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "train_state.json"
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered on rank 0, in CPU memory


@dataclass
class LoopState:
    """Where training stands; saved with every checkpoint so that a resume continues exactly."""

    epoch: int = 0  # epochs completed
    epoch_step: int = 0  # steps done in the current (unfinished) epoch
    global_step: int = 0
    epoch_loss_sum: float = 0.0  # loss sum and supervised tokens of the current epoch so far (all ranks)
    epoch_supervised: int = 0
    epoch_real: int = 0  # non-pad and computed (padded) tokens of the current epoch so far (all ranks)
    epoch_padded: int = 0
    train_s: float = 0.0  # seconds spent in steps (excludes startup, checkpoints)
    tokens: int = 0  # non-pad tokens seen, all workers
    supervised_tokens: int = 0
    initial_loss: float | None = None
    restarts: int = 0  # launches that resumed from a checkpoint (a rerun or a worker-group retry)
    resumed_from_step: int | None = None  # global step of the last resume
    first_step_unix: float | None = None
    history: list[dict] = field(default_factory=list)


def save_checkpoint(path: str, model, base, tokenizer, optimizer, scheduler, state: LoopState, rank: int) -> None:
    """Gather the full weights and optimizer state (a collective: every rank calls); rank 0 writes."""
    weights = get_model_state_dict(model, options=_FULL)
    optim = get_optimizer_state_dict(model, optimizer, options=_FULL)
    if rank != 0:
        return
    base.save_pretrained(path, state_dict=weights)
    tokenizer.save_pretrained(path)
    torch.save({"optimizer": optim, "scheduler": scheduler.state_dict()}, os.path.join(path, OPTIMIZER_FILE))
    with open(os.path.join(path, STATE_FILE), "w") as f:
        json.dump(state.__dict__, f)


def load_state(path: str) -> LoopState:
    with open(os.path.join(path, STATE_FILE)) as f:
        state = LoopState(**json.load(f))
    state.first_step_unix = None  # startup is timed per launch
    state.restarts += 1
    state.resumed_from_step = state.global_step
    return state


def load_optimizer(path: str, model, optimizer, scheduler) -> None:
    """Restore the optimizer (sharded as the model is) and the LR schedule from a checkpoint dir."""
    saved = torch.load(os.path.join(path, OPTIMIZER_FILE), weights_only=False)
    set_optimizer_state_dict(model, optimizer, saved["optimizer"], options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(saved["scheduler"])


def save_model(model, base, tokenizer, url: str, rank: int) -> None:
    """``save_pretrained`` of weights, config and tokenizer (chat template included) to any URL.
    A collective (the weights are gathered from every rank); rank 0 writes."""
    weights = get_model_state_dict(model, options=_FULL)
    if rank != 0:
        return
    if is_local(url):
        path = fsspec.core.url_to_fs(url)[1]
        base.save_pretrained(path, state_dict=weights)
        tokenizer.save_pretrained(path)
        return
    with tempfile.TemporaryDirectory(prefix="ray-distill-export-") as tmp:
        base.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        put_dir(tmp, url)
