"""The Ray Train worker loop of SFT: DDP over the workers, length-bucketed batches sliced by rank,
AdamW + warmup/cosine, per-epoch checkpoint and resume, rank-0 tracking and export.

Every worker holds the full list of encoded examples and computes the same batch plan, then takes
its slice of each global batch (``data.shard_of``). The loss is the mean cross-entropy over the
supervised tokens of the whole *global* batch: each worker divides its token-loss sum by the global
count and multiplies by the world size, and DDP's gradient averaging does the rest.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import fsspec
import ray
import ray.train
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ray_distill.config import TrainConfig
from ray_distill.data.fs import is_local, local_copy, put_dir
from ray_distill.training.data import IGNORE, collate, non_pad_fraction, plan_batches, shard_of, supervised_count

logger = logging.getLogger(__name__)

OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "train_state.json"


# ---------------------------------------------------------------- export
def save_model(model, tokenizer, url: str) -> None:
    """``save_pretrained`` of weights, config and tokenizer (chat template included) to any URL."""
    if is_local(url):
        path = fsspec.core.url_to_fs(url)[1]
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        return
    with tempfile.TemporaryDirectory(prefix="ray-distill-export-") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        put_dir(tmp, url)


# ---------------------------------------------------------------- optimisation
def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model, cfg: TrainConfig, total_steps: int):
    """AdamW (0.9, 0.98); weight decay on matrices only (not on norms and biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, cfg.min_lr_ratio)
    )
    return optimizer, scheduler


def token_loss_sum(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token cross-entropy over the supervised positions of a micro-batch."""
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    targets = inputs["labels"][:, 1:]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )


def global_sum(values: list[float]) -> list[float]:
    """Sum a few numbers over all workers (identity with one process)."""
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


# ---------------------------------------------------------------- loop state
@dataclass
class LoopState:
    epoch: int = 0  # epochs completed
    global_step: int = 0
    train_s: float = 0.0  # seconds spent in steps (excludes startup, checkpoints)
    tokens: int = 0  # non-pad tokens seen, all workers
    supervised_tokens: int = 0
    initial_loss: float | None = None
    first_step_unix: float | None = None
    history: list[dict] = field(default_factory=list)


def save_checkpoint(path: str, model, tokenizer, optimizer, scheduler, state: LoopState) -> None:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    opt_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    torch.save(opt_state, os.path.join(path, OPTIMIZER_FILE))
    with open(os.path.join(path, STATE_FILE), "w") as f:
        json.dump(state.__dict__, f)


def load_state(path: str) -> LoopState:
    with open(os.path.join(path, STATE_FILE)) as f:
        state = LoopState(**json.load(f))
    state.first_step_unix = None  # startup is timed per launch
    return state


# ---------------------------------------------------------------- the loop
def train_loop_per_worker(config: dict) -> None:
    """Entry point run by every Ray Train worker; ``config`` is built by ``sft.train_sft``."""
    from ray_distill.tracking import tracker_from_handle

    cfg = TrainConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    torch.manual_seed(cfg.seed + rank)
    examples = ray.get(config["examples"])
    lengths = [len(e["input_ids"]) for e in examples]
    total_steps = len(plan_batches(lengths, cfg.batch_size, world, seed=cfg.seed)) * cfg.epochs
    model, tokenizer, optimizer, scheduler, state = restore(config["base_model"], cfg, total_steps)
    if state.epoch:
        logger.info("rank %d resumed after epoch %d (step %d)", rank, state.epoch, state.global_step)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tracker = tracker_from_handle(config["tracker_handle"] if rank == 0 else None)
    run = EpochRunner(ray.train.torch.prepare_model(model), optimizer, scheduler, cfg, examples, rank, world,
                      pad_id or 0, tracker, config.get("log_every", 10))
    if state.epoch >= cfg.epochs:  # resumed a finished run: nothing to train, report its figures again
        ray.train.report(summary(state, {}))
    for epoch in range(state.epoch, cfg.epochs):
        epoch_metrics = run.epoch(plan_batches(lengths, cfg.batch_size, world, seed=cfg.seed + epoch), state)
        state.epoch = epoch + 1
        state.history.append(epoch_metrics)
        report(state, epoch_metrics, model, tokenizer, optimizer, scheduler, rank)
    if rank == 0:
        save_model(model, tokenizer, config["output_path"])
        logger.info("exported student to %s", config["output_path"])


def restore(base_model: str, cfg: TrainConfig, total_steps: int):
    """Model, tokenizer, optimizer, scheduler and loop state: from Ray Train's latest checkpoint
    when there is one (resume), else from the base model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = ray.train.get_checkpoint()
    source = checkpoint.as_directory() if checkpoint else local_copy(base_model)
    with source as model_dir:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        optimizer, scheduler = build_optimizer(model, cfg, total_steps)
        if not checkpoint:
            return model, tokenizer, optimizer, scheduler, LoopState()
        opt = torch.load(os.path.join(model_dir, OPTIMIZER_FILE), weights_only=False)
        optimizer.load_state_dict(opt["optimizer"])
        scheduler.load_state_dict(opt["scheduler"])
        return model, tokenizer, optimizer, scheduler, load_state(model_dir)


def summary(state: LoopState, epoch_metrics: dict) -> dict:
    last = epoch_metrics or (state.history[-1] if state.history else {})
    return {
        **last,
        "epochs": state.epoch,
        "steps": state.global_step,
        "supervised_tokens": state.supervised_tokens,
        "tokens": state.tokens,
        "tokens_per_s": state.tokens / state.train_s if state.train_s else 0.0,
        "train_s": state.train_s,
        "initial_loss": state.initial_loss,
        "first_step_unix": state.first_step_unix,
    }


def report(state: LoopState, epoch_metrics: dict, model, tokenizer, optimizer, scheduler, rank: int) -> None:
    """End of epoch: every worker reports; rank 0 attaches the checkpoint (``epoch_NNNN``)."""
    metrics = summary(state, epoch_metrics)
    with tempfile.TemporaryDirectory(prefix="ray-distill-ckpt-") as tmp:
        checkpoint = None
        if rank == 0:
            save_checkpoint(tmp, model, tokenizer, optimizer, scheduler, state)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch_{state.epoch:04d}")


@dataclass
class EpochRunner:
    """Runs one epoch of steps over a batch plan; every rank computes identical global figures."""

    model: torch.nn.Module  # DDP-wrapped when world > 1
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    cfg: TrainConfig
    examples: list[dict]
    rank: int
    world: int
    pad_id: int
    tracker: Any  # ray_distill.tracking.Tracker
    log_every: int = 10

    def __post_init__(self) -> None:
        self.lengths = [len(e["input_ids"]) for e in self.examples]
        self.supervised = [supervised_count(e) for e in self.examples]

    def epoch(self, plan: list[list[int]], state: LoopState) -> dict:
        self.model.train()
        epoch_sum, epoch_sup, window_sum, window_sup = 0.0, 0, 0.0, 0
        window_tokens, window_t = 0, 0.0
        for batch in plan:
            t0 = time.perf_counter()
            if state.first_step_unix is None:
                state.first_step_unix = time.time()
            loss_sum, sup, tokens = self.step(batch)
            dt = time.perf_counter() - t0
            state.global_step += 1
            state.train_s += dt
            state.tokens += tokens
            state.supervised_tokens += sup
            epoch_sum, epoch_sup = epoch_sum + loss_sum, epoch_sup + sup
            window_sum, window_sup = window_sum + loss_sum, window_sup + sup
            window_tokens, window_t = window_tokens + tokens, window_t + dt
            if state.global_step == 1 or state.global_step % self.log_every == 0:
                (total,) = global_sum([window_sum])
                loss = total / max(1, window_sup)
                if state.initial_loss is None:
                    state.initial_loss = loss
                self.log_step(state.global_step, loss, window_tokens / window_t, state.supervised_tokens)
                window_sum, window_sup, window_tokens, window_t = 0.0, 0, 0, 0.0
        (total,) = global_sum([epoch_sum])
        micro = [shard_of(b, r, self.world) for b in plan for r in range(self.world)]
        return {"train_loss": total / max(1, epoch_sup), "non_pad_fraction": non_pad_fraction(self.lengths, micro)}

    def step(self, batch: list[int]) -> tuple[float, int, int]:
        """One optimiser step on a global batch; returns this rank's loss sum and the global
        supervised and non-pad token counts of the batch."""
        global_sup = sum(self.supervised[i] for i in batch)
        global_tokens = sum(self.lengths[i] for i in batch)
        mine = [self.examples[i] for i in shard_of(batch, self.rank, self.world)]
        inputs = collate(mine, pad_id=self.pad_id)
        loss_sum = token_loss_sum(self.model, inputs)
        loss = loss_sum * self.world / max(1, global_sup)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss_sum.item(), global_sup, global_tokens

    def log_step(self, step: int, loss: float, tokens_per_s: float, supervised: int) -> None:
        lr = self.scheduler.get_last_lr()[0]
        metrics = {"train/loss": loss, "train/lr": lr, "train/tokens_per_s": tokens_per_s,
                   "train/supervised_tokens": supervised}
        self.tracker.log_metrics(metrics, step=step)
        if self.rank == 0:
            logger.info("step %d loss %.4f lr %.2e tokens/s %.0f", step, loss, lr, tokens_per_s)
