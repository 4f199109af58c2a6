"""Checkpoint and export of the SFT loop, the same for DDP and FSDP.

Checkpoints are sharded (``torch.distributed.checkpoint``): every rank writes its own shards of the
weights and the optimizer state straight to the run's storage URL (any fsspec URL; one
``__<rank>_0.distcp`` file per rank plus rank 0's ``.metadata``), and every rank reads back what its
shards need, re-sharding when the world size changed. Nothing is gathered. Rank 0 adds the loop state
and the LR schedule (``train_state.json``). The final export is gathered once, at the end, and written
with ``save_pretrained`` in the base model's own dtype (:func:`export_dtype`: bf16 for real checkpoints,
fp32 for the synthetic presets), cast on rank 0 tensor by tensor, the dtype recorded in the saved config.

    save_checkpoint(url, model, optimizer, scheduler, state, rank)   # every rank calls
    state = load_checkpoint(url, model, optimizer, scheduler)         # every rank calls, after wrapping
    save_model(model, base, tokenizer, "s3://bucket/student", rank)   # every rank calls

``model`` is the wrapped :class:`~ray_distill.training.shard.LossModel` (DDP, FSDP or plain), ``base``
the Hugging Face model inside it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field

import fsspec
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ray_distill.data.fs import is_local, put_dir
from ray_distill.training.shard import hf_state_dict

logger = logging.getLogger(__name__)

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


def storage_url(path: str, storage: str) -> str:
    """A path under a Ray Train storage root (Ray reports it without the URL's scheme) as a URL of the
    same filesystem as ``storage``."""
    if "://" in storage and "://" not in path:
        return f"{storage.split('://', 1)[0]}://{path}"
    return path


def _sharded(model, optimizer) -> dict:
    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}


def save_checkpoint(url: str, model, optimizer, scheduler, state: LoopState, rank: int) -> None:
    """Write this rank's shards of weights and optimizer state to ``url`` (a collective: every rank
    calls); rank 0 adds the loop state and the LR schedule."""
    dcp.save(_sharded(model, optimizer), storage_writer=FsspecWriter(url))
    if rank == 0:
        with fsspec.open(f"{url}/{STATE_FILE}", "w") as f:
            json.dump({"loop": state.__dict__, "scheduler": scheduler.state_dict()}, f)
    if dist.is_initialized():
        dist.barrier()  # the checkpoint is complete on storage before anyone reports it


def load_checkpoint(url: str, model, optimizer, scheduler) -> LoopState:
    """Read this rank's shards of weights and optimizer state (re-sharded as the model is now) and the
    LR schedule from ``url``; return the loop state, counted as one more restart."""
    try:
        with fsspec.open(f"{url}/{STATE_FILE}", "r") as f:
            saved = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{url} is not a sharded training checkpoint (no {STATE_FILE}); it was written by an "
                         "older version: start a new run (another run_name or storage path)") from None
    sharded = _sharded(model, optimizer)
    dcp.load(sharded, storage_reader=FsspecReader(url))
    set_model_state_dict(model, sharded["model"])
    set_optimizer_state_dict(model, optimizer, sharded["optim"])
    scheduler.load_state_dict(saved["scheduler"])
    state = LoopState(**saved["loop"])
    state.first_step_unix = None  # startup is timed per launch
    state.restarts += 1
    state.resumed_from_step = state.global_step
    return state


def save_model(model, base, tokenizer, url: str, rank: int) -> None:
    """``save_pretrained`` of weights, config and tokenizer (chat template included) to any URL, in the
    base model's own dtype (:func:`export_dtype`). A collective (the weights are gathered from every rank,
    once); rank 0 casts and writes."""
    weights = hf_state_dict(get_model_state_dict(model, options=_FULL))
    if rank != 0:
        return
    dtype = export_dtype(base)
    weights = cast_floating(weights, dtype)
    if is_local(url):
        _write(base, tokenizer, weights, dtype, fsspec.core.url_to_fs(url)[1])
        return
    with tempfile.TemporaryDirectory(prefix="ray-distill-export-") as tmp:
        _write(base, tokenizer, weights, dtype, tmp)
        put_dir(tmp, url)


def _write(base, tokenizer, weights: dict, dtype: torch.dtype, path: str) -> None:
    saved = base.config.dtype  # save_pretrained writes the live model's dtype (fp32): record the export's
    try:
        base.save_pretrained(path, state_dict=weights)
        tokenizer.save_pretrained(path)
        base.config.dtype = dtype
        base.config.save_pretrained(path)
    finally:
        base.config.dtype = saved


def cast_floating(weights: dict, dtype: torch.dtype) -> dict:
    """``weights`` with every floating tensor cast to ``dtype``, in place and one tensor at a time (the
    peak is the gathered state plus one cast tensor); tensors shared by several keys (tied embeddings)
    stay shared; integer tensors and tensors already in ``dtype`` are kept as they are."""
    cast: dict[int, torch.Tensor] = {}
    for key, value in weights.items():
        if value.is_floating_point() and value.dtype != dtype:
            if id(value) not in cast:
                cast[id(value)] = value.to(dtype)
            weights[key] = cast[id(value)]
    return weights


def export_dtype(base) -> torch.dtype:
    """The dtype of the checkpoint ``base`` was built from (its ``config.json``'s ``dtype`` /
    ``torch_dtype``): the workers train in fp32 (or bf16 compute over fp32 shards) and overwrite the config
    in memory, so it is read again from ``base.name_or_path`` at the loaded commit. fp32 when the
    checkpoint names no dtype or its config cannot be read again (said so in the log)."""
    from transformers import AutoConfig

    source = base.name_or_path
    try:
        config = AutoConfig.from_pretrained(source, revision=getattr(base.config, "_commit_hash", None))
    except (OSError, ValueError) as err:
        logger.warning("export: the config of %s cannot be read again (%s); exporting in float32", source, err)
        return torch.float32
    return parse_dtype(getattr(config, "dtype", None))


def parse_dtype(value) -> torch.dtype:
    """A config's ``dtype`` (a ``torch.dtype``, ``"bfloat16"``, ``"torch.float16"`` or None) as a floating
    ``torch.dtype``; None and ``"auto"`` are float32."""
    if isinstance(value, torch.dtype):
        return value
    if value in (None, "auto"):
        return torch.float32
    dtype = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"export: {value!r} is not a floating dtype")
    return dtype
