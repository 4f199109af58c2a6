"""The Ray Train worker loop of SFT: DDP or FSDP over the workers, batches sliced by rank and split
into gradient-accumulation micro-batches, packed (or length-bucketed) rows, AdamW + warmup/cosine,
fp32 or bf16 autocast, checkpoints every epoch (and every K steps) with exact resume, rank-0 tracking
and export. A launch may hold several jobs (``sft.train_sft_many``: the same base on several corpora), run
one after the other; their checkpoints carry the job's index, so a resume starts at the right job.

Every worker computes the same batch plan from every example's length (the driver passes the lengths; the
token ids are in the launch's Ray Data dataset, ``sft.tokenize_rows``), takes its share of each global batch
(``data.micro_batches``) and, at the start of each epoch, reads from the dataset the examples of its share of
the epoch's batches only (:func:`read_examples`): a worker holds ~1/world of the corpus. The loss is the mean
cross-entropy over the supervised tokens of the whole *global* batch: each worker divides every micro-batch's
token-loss sum by the global count and multiplies by the world size; gradients add up over the accumulation steps
and DDP/FSDP average them over the workers, which gives exactly that mean. DDP all-reduces on the last
micro-step only; FSDP reduce-scatters after every micro-step (``reduce_every_micro_step``, gradients stay
sharded) or, when that is off, on the last one only.

Device-true: every tensor the loop hands to a collective is built on the worker's training device
(``ray.train.torch.get_device()``): on GPU workers the process group is NCCL (``sft.process_group_backend``),
which has no CPU tensors. ``tests/training/test_device_true.py`` checks it on CPU.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from ray_distill.config import TrainConfig
from ray_distill.models import load_tokenizer
from ray_distill.training.checkpoint import LoopState, load_checkpoint, save_checkpoint, save_model, storage_url
from ray_distill.training.data import collate, layout, micro_batches, padded_size, plan_batches, rank_share
from ray_distill.training.optim import AdamW
from ray_distill.training.shard import build_student, resolve_attn_implementation

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- optimisation
# Rank 0's line every ``log_every`` steps; the driver's console turns it into its training bar
# (ray_distill.console.STEP_LINE reads it back).
STEP_FORMAT = "step %d/%d loss %.4f lr %.2e tokens/s %.0f"


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model, cfg: TrainConfig, total_steps: int):
    """AdamW (0.9, 0.98); weight decay on matrices only (not on norms and biases). With ``param_dtype: bf16``
    the fp32-moment, stochastically rounding AdamW of :mod:`ray_distill.training.optim`."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if cfg.param_dtype == "bf16":
        optimizer = AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), seed=cfg.seed)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, cfg.min_lr_ratio)
    )
    return optimizer, scheduler


def token_loss_sum(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over the supervised positions of a micro-batch (``model``: a
    :class:`~ray_distill.training.shard.LossModel`, wrapped or not)."""
    return model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], labels=inputs["labels"])


def global_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all workers (identity with one process); the tensor is built on the training
    ``device`` (NCCL has no CPU tensors)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def epoch_plan(lengths: list[int], cfg: TrainConfig, world: int, epoch: int) -> list[list[int]]:
    """The global batches of one epoch, identical on every worker (and on every resume)."""
    return plan_batches(lengths, cfg.batch_size, world * cfg.grad_accum_steps, seed=cfg.seed + epoch,
                        bucket=not cfg.packing)


# ---------------------------------------------------------------- parallelism
@contextlib.contextmanager
def gradient_sync(model, sync: bool, reduce_every_micro_step: bool) -> Iterator[None]:
    """Skip the gradient reduction on an accumulation micro-step (``sync`` False). DDP always skips it there;
    FSDP only when ``reduce_every_micro_step`` is off, since a skipped reduce-scatter keeps the gradients
    unsharded (a full gradient copy per rank) until the last micro-step."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if sync:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule) and not reduce_every_micro_step:
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


# ---------------------------------------------------------------- the loop
JOB_PREFIX = re.compile(r"^job(\d+)-")


def checkpoint_name(job: int, jobs: int, name: str) -> str:
    """A checkpoint's directory name: ``name`` (``epoch_0003``) for a one-job launch, prefixed with the
    job's index in a multi-job one (``job01-epoch_0003``), so a resume knows which job it continues."""
    return name if jobs == 1 else f"job{job:02d}-{name}"


def checkpoint_job(path: str | None) -> int:
    """The job a checkpoint (directory path) belongs to: 0 unprefixed or without a checkpoint."""
    m = JOB_PREFIX.match(path.rstrip("/").rsplit("/", 1)[-1]) if path else None
    return int(m.group(1)) if m else 0


def job_metrics_url(metrics_dir: str, job: int) -> str:
    """Where rank 0 writes a job's final figures (the driver reads them after the launch)."""
    return f"{metrics_dir}/job{job:02d}.json"


def train_loop_per_worker(config: dict) -> None:
    """Entry point run by every Ray Train worker; ``config`` is built by ``sft.train_sft_many``: the same
    base fine-tuned once per job, one job after the other, from the job the latest checkpoint belongs to."""
    cfg = TrainConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    checkpoint = ray.train.get_checkpoint()
    jobs = config["jobs"]
    first = checkpoint_job(checkpoint.path if checkpoint else None)
    for j in range(first, len(jobs)):
        start = time.time()
        final = train_job(config, cfg, j, rank, world, checkpoint if j == first else None)
        if rank == 0:
            with fsspec.open(job_metrics_url(config["metrics_dir"], j), "w") as f:
                json.dump({**final, "job_start_unix": start, "job_end_unix": time.time()}, f, default=str)
        gc.collect()


def train_job(config: dict, cfg: TrainConfig, j: int, rank: int, world: int, checkpoint) -> dict:
    """Job ``j`` of the launch: build the student from the base (or the checkpoint), train, export;
    returns the figures of its last report."""
    from ray_distill.tracking import tracker_from_handle

    job = config["jobs"][j]
    torch.manual_seed(cfg.seed)  # each job trains as it would in a launch of its own
    lengths, supervised = job["lengths"], job["supervised"]
    shard = ray.train.get_dataset_shard(job["dataset"])
    steps_per_epoch = len(epoch_plan(lengths, cfg, world, 0))
    total_steps = steps_per_epoch * (cfg.schedule_epochs or cfg.epochs)  # the learning-rate schedule's length
    device = ray.train.torch.get_device()
    # the base: a path, URL or hub id (each worker loads it itself); the exported student carries the training
    # chat template. A resume reads its weights from the sharded checkpoint instead.
    model, base = build_student(config["base_model"], cfg, rank, world, device, load_weights=checkpoint is None)
    tokenizer = load_tokenizer(config["base_model"], config.get("chat_template"))
    optimizer, scheduler = build_optimizer(model, cfg, total_steps)
    state = LoopState()
    if checkpoint:
        state = load_checkpoint(storage_url(checkpoint.path, config["storage_path"]), model, optimizer, scheduler)
        logger.info("rank %d resumed at epoch %d step %d", rank, state.epoch, state.global_step)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tracker = tracker_from_handle(job["tracker_handle"] if rank == 0 else None)
    run = EpochRunner(model, optimizer, scheduler, cfg, lengths, supervised, rank, world, pad_id or 0, tracker,
                      device, config.get("log_every", 10), total_steps=steps_per_epoch * cfg.epochs)
    final: dict = {}
    node = ray.get_runtime_context().get_node_id()

    def report(metrics: dict, name: str) -> None:
        """Every worker writes its shards of checkpoint ``name`` into the run's storage and reports it
        (a barrier); Ray Train registers it (and prunes old ones) without copying anything."""
        from ray.train import CheckpointUploadMode

        run.sync(state)
        final.update(summary(state, metrics), **work_by_node(run.local_tokens, node), **held_rows(run.held_rows))
        name = checkpoint_name(j, len(config["jobs"]), name)
        storage = ray.train.get_context().get_storage()
        path = storage.build_checkpoint_path_from_name(name)
        save_checkpoint(storage_url(path, config["storage_path"]), model, optimizer, scheduler, state, rank)
        ckpt = ray.train.Checkpoint(path, filesystem=storage.storage_filesystem)
        ray.train.report(dict(final), checkpoint=ckpt, checkpoint_dir_name=name,
                         checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)

    if state.epoch >= cfg.epochs:  # resumed a finished run: nothing to train, report its figures again
        final.update(summary(state, {}), **work_by_node(0, node), **held_rows(0))
        ray.train.report(dict(final))
    every = cfg.checkpoint_every_steps
    for epoch in range(state.epoch, cfg.epochs):
        plan = epoch_plan(lengths, cfg, world, epoch)
        run.examples = {}  # the last epoch's share goes before this one's is read
        run.examples = read_examples(shard, rank_share(plan[state.epoch_step :], rank, world))
        run.held_rows = max(run.held_rows, len(run.examples))
        for _ in run.steps(plan[state.epoch_step :], state):
            if every and state.global_step % every == 0 and state.epoch_step < len(plan):
                report({}, f"step_{state.global_step:07d}")
        run.sync(state)
        epoch_metrics = {"train_loss": state.epoch_loss_sum / max(1, state.epoch_supervised),
                         "non_pad_fraction": state.epoch_real / max(1, state.epoch_padded)}
        state.history.append(epoch_metrics)
        state.epoch, state.epoch_step = epoch + 1, 0
        state.epoch_loss_sum, state.epoch_supervised, state.epoch_real, state.epoch_padded = 0.0, 0, 0, 0
        tracker.log_metrics({"train/epoch_loss": epoch_metrics["train_loss"],
                             "train/non_pad_fraction": epoch_metrics["non_pad_fraction"]}, step=state.global_step)
        report(epoch_metrics, f"epoch_{state.epoch:04d}")
    run.examples = {}
    release_training_state(model, optimizer)
    save_model(model, base, tokenizer, job["output_path"], rank)
    if rank == 0:
        logger.info("exported student to %s", job["output_path"])
    return final


def release_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Free the optimizer state and gradients once the last checkpoint is written, before the export gathers
    the full weights: the gathered copy then takes their place in host memory rather than adding to them."""
    optimizer.state.clear()
    model.zero_grad(set_to_none=True)
    gc.collect()


def summary(state: LoopState, epoch_metrics: dict) -> dict:
    last = epoch_metrics or (state.history[-1] if state.history else {})
    return {
        **last,
        "epochs": state.epoch,
        "epoch_losses": [h["train_loss"] for h in state.history],  # the loss curve, one point per epoch
        "steps": state.global_step,
        "supervised_tokens": state.supervised_tokens,
        "tokens": state.tokens,
        "tokens_per_s": state.tokens / state.train_s if state.train_s else 0.0,
        "train_s": state.train_s,
        "initial_loss": state.initial_loss,
        "restarts": state.restarts,
        "resumed_from_step": state.resumed_from_step,
        "first_step_unix": state.first_step_unix,
        **peak_memory(),
    }


def peak_memory() -> dict:
    """This worker's peak host RSS and (on a GPU) peak device memory allocated by torch, in MB."""
    import resource

    figures = {"peak_host_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        figures["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return figures


def work_by_node(local_tokens: int, node_id: str) -> dict:
    """Non-pad tokens each node's workers trained on in this launch (``{node_id: tokens}``; ``node_id``: this
    worker's node). The object gather runs on the current CUDA device under NCCL (Ray Train sets it)."""
    mine = (node_id, local_tokens)
    everyone = [mine]
    if dist.is_available() and dist.is_initialized():
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
    work: dict[str, int] = {}
    for node, tokens in everyone:
        work[node] = work.get(node, 0) + tokens
    return {"work_by_node": work, "num_nodes": len(work)}


def read_examples(shard, wanted: set[int]) -> dict[int, dict]:
    """The examples of ``wanted`` (row indices) read from ``shard`` (the job's dataset: ``index``, ``input_ids``,
    ``labels``), streamed a block at a time: only these rows are kept (as int32 arrays)."""
    found: dict[int, dict] = {}
    for batch in shard.iter_batches(batch_size=None, batch_format="numpy"):
        for i, ids, labels in zip(batch["index"].tolist(), batch["input_ids"], batch["labels"]):
            if i in wanted:
                found[i] = {"input_ids": np.array(ids, dtype=np.int32), "labels": np.array(labels, dtype=np.int32)}
    if len(found) != len(wanted):
        raise RuntimeError(f"the training dataset lacks {len(wanted) - len(found)} of the {len(wanted)} rows "
                           f"this worker trains on (e.g. row {min(wanted - set(found))})")
    return found


def held_rows(local: int) -> dict:
    """Per rank, the most examples it held at once (its share of one epoch), and their maximum."""
    every = [local]
    if dist.is_available() and dist.is_initialized():
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, local)
    return {"held_rows_max": max(every), "held_rows_by_rank": every}


@dataclass
class EpochRunner:
    """Runs optimiser steps over global batches; every rank computes identical global figures."""

    model: torch.nn.Module  # DDP- or FSDP-wrapped when world > 1
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    cfg: TrainConfig
    lengths: list[int]  # every example's tokens (the whole corpus: the batch plan is global)
    supervised: list[int]  # every example's supervised tokens
    rank: int
    world: int
    pad_id: int
    tracker: Any  # ray_distill.tracking.Tracker
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    log_every: int = 10
    total_steps: int = 0  # optimizer steps of the whole launch (the console's training bar)
    local_tokens: int = 0  # non-pad tokens this worker trained on (this launch)
    examples: dict[int, dict] = field(default_factory=dict)  # this worker's examples of the epoch, by index
    held_rows: int = 0  # the most examples this worker held at once

    def __post_init__(self) -> None:
        self._pending = [0.0, 0, 0]  # this rank's loss sum, real and padded tokens not yet in the state
        # FSDP computes in bf16 through its mixed-precision policy; DDP and one worker autocast.
        self.autocast = self.cfg.precision == "bf16" and self.cfg.strategy != "fsdp"
        # varlen flash attention sees packed examples only in one row (position_ids restarting, batch 1)
        attn = resolve_attn_implementation(self.cfg.attn_implementation, self.device)
        self.one_row = self.cfg.packing and attn.startswith("flash")

    def steps(self, batches: list[list[int]], state: LoopState) -> Iterator[None]:
        """One optimiser step per global batch, updating ``state``; yields after each step."""
        self.model.train()
        window_sum, window_sup, window_tokens, window_t = 0.0, 0, 0, 0.0
        for batch in batches:
            t0 = time.perf_counter()
            if state.first_step_unix is None:
                state.first_step_unix = time.time()
            loss_sum, sup, tokens = self.step(batch)
            dt = time.perf_counter() - t0
            state.global_step += 1
            state.epoch_step += 1
            state.train_s += dt
            state.tokens += tokens
            state.supervised_tokens += sup
            state.epoch_supervised += sup
            window_sum, window_sup = window_sum + loss_sum, window_sup + sup
            window_tokens, window_t = window_tokens + tokens, window_t + dt
            if state.global_step == 1 or state.global_step % self.log_every == 0:
                (total,) = global_sum([window_sum], self.device)
                loss = total / max(1, window_sup)
                if state.initial_loss is None:
                    state.initial_loss = loss
                self.log_step(state.global_step, loss, window_tokens / window_t, state.supervised_tokens)
                window_sum, window_sup, window_tokens, window_t = 0.0, 0, 0, 0.0
            yield

    def step(self, batch: list[int]) -> tuple[float, int, int]:
        """One optimiser step on a global batch (``grad_accum_steps`` micro-steps per worker); returns
        this rank's loss sum and the global supervised and non-pad token counts of the batch."""
        global_sup = sum(self.supervised[i] for i in batch)
        scale = self.world / max(1, global_sup)
        micros = micro_batches(batch, self.rank, self.world, self.cfg.grad_accum_steps)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for j, micro in enumerate(micros):
            rows = layout(self.lengths, micro, self.cfg.packing, self.cfg.max_seq_len)
            inputs = collate([[self.examples[i] for i in row] for row in rows], pad_id=self.pad_id,
                             one_row=self.one_row)
            with gradient_sync(self.model, sync=j == len(micros) - 1,
                               reduce_every_micro_step=self.cfg.reduce_every_micro_step):
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                    micro_loss = token_loss_sum(self.model, {k: v.to(self.device) for k, v in inputs.items()})
                (micro_loss * scale).backward()
            loss_sum += micro_loss.detach().double()  # one device->host sync per step, below
            real = sum(self.lengths[i] for i in micro)
            self.local_tokens += real
            self._pending[1] += real
            self._pending[2] += real if self.one_row else padded_size(self.lengths, rows)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        loss_sum = loss_sum.item()
        self._pending[0] += loss_sum
        return loss_sum, global_sup, sum(self.lengths[i] for i in batch)

    def sync(self, state: LoopState) -> None:
        """Add every rank's pending loss and token sums to the (rank-identical) state."""
        loss_sum, real, padded = global_sum(self._pending, self.device)
        state.epoch_loss_sum += loss_sum
        state.epoch_real += int(real)
        state.epoch_padded += int(padded)
        self._pending = [0.0, 0, 0]

    def log_step(self, step: int, loss: float, tokens_per_s: float, supervised: int) -> None:
        lr = self.scheduler.get_last_lr()[0]
        metrics = {"train/loss": loss, "train/lr": lr, "train/tokens_per_s": tokens_per_s,
                   "train/supervised_tokens": supervised}
        self.tracker.log_metrics(metrics, step=step)
        if self.rank == 0:
            logger.info(STEP_FORMAT, step, self.total_steps, loss, lr, tokens_per_s)
