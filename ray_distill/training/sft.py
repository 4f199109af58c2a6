"""Supervised fine-tuning of a Hugging Face causal LM on chat ``messages`` rows with Ray Train.

    result = train_sft(rows, base_model="/models/student", output_path="s3://bucket/run/student",
                       cfg=job.train, storage_path="s3://bucket/ray-train", run_name="sft-teacher-a")

The driver runs the preflight on the first rows, then the rows are tokenized in a Ray Data plan
(:func:`tokenize_rows`: ``data.encode_example`` in Ray Data tasks, the result materialized in the object
store); the driver keeps three small figures per row (length, supervised tokens, a digest), never the token
ids. It launches a ``TorchTrainer`` with that dataset, unsplit (``DataConfig(datasets_to_split=[])``): every
worker plans the same global batches from the lengths and reads, each epoch, only the rows of its share of
them (``loop.read_examples``), so packing and the deterministic epoch plan are as before. The trainer runs
DDP or FSDP (the process group's backend chosen explicitly, :func:`process_group_backend`: gloo on CPU, NCCL
on GPU; each worker asks for ``cpus_per_worker`` CPUs, a GPU with ``use_gpu`` and the ``custom_resources``
that steer it onto the cluster's training node type, :func:`worker_resources`). The workers
(``loop.train_loop_per_worker``) checkpoint every epoch (and every ``checkpoint_every_steps``) under
``<storage_path>/<run_name>``, keeping ``keep_checkpoints``; a failed worker group is restarted from the
latest checkpoint up to ``max_failures`` times, and rerunning the same ``(storage_path, run_name)`` on the
same inputs resumes too (the run name gets a fingerprint of the tokenized examples, recipe and base model,
so a changed corpus starts fresh). Rank 0 exports the final model with ``save_pretrained`` to
``output_path``; the driver logs it to MLflow. Ray must already be initialised.

``train_sft_many`` fine-tunes the same base on several corpora (the smoke test's candidates) one after the
other in a single launch, so the worker group starts once:

    results = train_sft_many([SFTJob(rows_a, "s3://b/smoke/a"), SFTJob(rows_b, "s3://b/smoke/b")],
                             base_model="/models/student", cfg=smoke_cfg, storage_path="s3://b/ray-train",
                             run_name="smoke")
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pandas as pd

import ray
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from ray_distill.columns import MESSAGES
from ray_distill.config import TrainConfig
from ray_distill.training.data import encode_example, preflight, supervised_count
from ray_distill.data.fs import absolute, is_local, signature
from ray_distill.models import load_tokenizer
from ray_distill.training.checkpoint import storage_url
from ray_distill.training.loop import job_metrics_url, train_loop_per_worker

logger = logging.getLogger(__name__)

# glibc raises its mmap threshold after large frees, so the buffers FSDP all-gathers and frees every layer
# (and gradients, optimizer temporaries) stay in the heap and the workers' host RSS grows by a model copy or
# more; a fixed threshold returns them to the OS. FSDP only: every allocation above it becomes an mmap and
# page faults, which made the tiny student's DDP/single-worker steps ~1.5x slower (41 vs 64 ms per step of
# 16 rows on 2 CPU threads). Kept when the environment already sets it.
FSDP_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def worker_env(cfg: TrainConfig) -> dict[str, str]:
    """Environment variables of the Ray Train workers for ``cfg``."""
    defaults = FSDP_WORKER_ENV if cfg.strategy == "fsdp" else {}
    return {k: os.environ.get(k, v) for k, v in defaults.items()}


def process_group_backend(cfg: TrainConfig) -> str:
    """The torch.distributed backend of the workers: NCCL on GPUs (every collective's tensors on the device,
    see ``loop``), gloo on CPUs. With ``cpu_offload`` on GPUs the shards live in host memory and torch reduces
    some of them there (the gradient norm of clipping, the full weights gathered for the export, the rank-0
    weight broadcast at start): host tensors then go through gloo, device ones through NCCL."""
    if not cfg.use_gpu:
        return "gloo"
    return "cpu:gloo,cuda:nccl" if cfg.cpu_offload else "nccl"


def worker_resources(cfg: TrainConfig) -> dict[str, float]:
    """The Ray resources each training worker requests besides its GPU (``use_gpu``)."""
    return {"CPU": cfg.cpus_per_worker, **cfg.custom_resources}


def worker_bundle(cfg: TrainConfig) -> dict[str, float]:
    """Everything one training worker reserves: :func:`worker_resources` and, with ``use_gpu``, one GPU (Ray Train's
    default when ``resources_per_worker`` names none)."""
    return {**worker_resources(cfg), **({"GPU": 1.0} if cfg.use_gpu else {})}


JOB_METRICS_DIR = "jobs"  # under the run's storage dir: each job's final figures, written by rank 0

# Settings that change how a run is kept or where it runs, not what it computes: changing them resumes the same run.
OPERATIONAL = {"keep_checkpoints", "max_failures", "checkpoint_every_steps", "custom_resources"}


@dataclass
class TrainResult:
    model_path: str  # where the final student was saved (save_pretrained layout)
    checkpoint_path: str | None  # Ray Train's latest checkpoint (sharded: torch.distributed.checkpoint + loop state)
    metrics: dict  # train_loss, initial_loss, tokens_per_s, supervised_tokens, steps, epochs, wall_s, ...


@dataclass
class SFTJob:
    """One fine-tune of a :func:`train_sft_many` launch: its rows, where its student goes, its MLflow run."""

    rows: list[dict]
    output_path: str
    tracker_handle: Any = None


def train_sft(
    rows: list[dict],
    base_model: str,
    output_path: str,
    cfg: TrainConfig,
    storage_path: str,
    run_name: str,
    tracker_handle=None,
    log_model: bool = True,
    chat_template: str | None = None,
) -> TrainResult:
    """Fine-tune ``base_model`` (a save_pretrained dir on any fsspec URL, or a hub id ``org/name[@rev]``)
    on ``rows`` and save the student to ``output_path``; see the module docstring. ``log_model=False``
    records only the student's URL in MLflow (for the many intermediate students of smoke tests, searches
    and ablations). ``chat_template`` (text) replaces the base model's own for training, and the exported
    student carries it."""
    (result,) = train_sft_many([SFTJob(rows, output_path, tracker_handle)], base_model, cfg, storage_path,
                               run_name, log_model=log_model, chat_template=chat_template)
    return result


def train_sft_many(
    jobs: list[SFTJob],
    base_model: str,
    cfg: TrainConfig,
    storage_path: str,
    run_name: str,
    log_model: bool = True,
    chat_template: str | None = None,
) -> list[TrainResult]:
    """:func:`train_sft` of the same base and recipe on several corpora (a smoke test's candidate teachers),
    one after the other in **one** Ray Train launch: the worker group starts once (on a CPU laptop that
    start is ~20 s a launch, as long as a smoke-test student's steps), and each job trains exactly as it
    would alone (same seed, fresh optimiser, its own export and MLflow run). A resume continues from the
    job the latest checkpoint belongs to; the jobs before it are done."""
    from ray_distill.generation.hosts import release_engines
    from ray_distill.tracking import tracker_from_handle

    if not jobs:
        raise ValueError("train_sft_many needs at least one job")
    # idle engine hosts hold CPUs/GPUs: kept only when the worker group fits beside them (they leave a CPU for the
    # tokenization, generation.hosts.MIN_FREE_CPUS), so the next stage that samples swaps its model in
    release_engines(room_for=[worker_bundle(cfg)] * cfg.num_workers, what="the Ray Train launch")
    tokenized = []
    for job in jobs:
        corpus = tokenize_rows(job.rows, base_model, cfg.max_seq_len, chat_template)
        tracker_from_handle(job.tracker_handle).log_metrics({f"train/{k}": v for k, v in corpus.figures.items()})
        tokenized.append(corpus)
    # Resume only what is the same training: a changed corpus, recipe or base starts a new run.
    run_name = f"{run_name}-{fingerprint([c.digests for c in tokenized], cfg, base_model)}"
    storage = absolute(storage_path)
    metrics_dir = f"{storage.rstrip('/')}/{run_name}/{JOB_METRICS_DIR}"
    t0 = time.time()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(),
            "jobs": [{"dataset": dataset_name(j), "lengths": c.lengths, "supervised": c.supervised,
                      "output_path": job.output_path, "tracker_handle": job.tracker_handle}
                     for j, (job, c) in enumerate(zip(jobs, tokenized))],
            "metrics_dir": metrics_dir,
            "base_model": base_model,
            "storage_path": storage,
            "chat_template": chat_template,
        },
        # every worker sees the whole (materialized) dataset and reads its share of each epoch's batches
        datasets={dataset_name(j): c.dataset for j, c in enumerate(tokenized)},
        dataset_config=DataConfig(datasets_to_split=[]),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=worker_resources(cfg)
        ),
        torch_config=TorchConfig(backend=process_group_backend(cfg)),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            worker_runtime_env={"env_vars": worker_env(cfg)},
        ),
    )
    result = trainer.fit()
    t_end = time.time()
    reports = []
    for j in range(len(jobs)):
        with fsspec.open(job_metrics_url(metrics_dir, j), "r") as f:
            reports.append(json.load(f))
    spans = job_spans([(r.pop("job_start_unix"), r.pop("job_end_unix")) for r in reports], t0, t_end)
    results = []
    for j, (job, corpus, reported, (start, end)) in enumerate(zip(jobs, tokenized, reports, spans)):
        last = j == len(jobs) - 1
        metrics = final_metrics(reported, corpus.figures, start, end)
        log_student(tracker_from_handle(job.tracker_handle), job.output_path, copy=log_model)
        name = run_name if len(jobs) == 1 else f"{run_name} job {j}"
        logger.info(
            "trained %s: loss %.4f (initial %.4f), %d steps, %.0f tokens/s, startup %.1fs, %.1fs total",
            name, metrics["train_loss"], metrics["initial_loss"], metrics["steps"], metrics["tokens_per_s"],
            metrics["startup_s"], metrics["wall_s"],
        )
        results.append(TrainResult(model_path=job.output_path,
                                   checkpoint_path=checkpoint_uri(result, storage_path) if last else None,
                                   metrics=metrics))
    return results


def dataset_name(job: int) -> str:
    """The name of job ``job``'s tokenized dataset in a launch (``ray.train.get_dataset_shard``)."""
    return f"job{job:02d}"


@dataclass
class TokenizedCorpus:
    """A corpus tokenized by :func:`tokenize_rows`: the dataset (columns ``index``, ``input_ids``, ``labels``,
    materialized in the object store) and, per row in ``index`` order, what the driver and the epoch plan need."""

    dataset: Any  # ray.data.MaterializedDataset
    lengths: list[int]
    supervised: list[int]
    digests: list[str]
    figures: dict


ROWS_PER_BLOCK = 512  # rows per tokenization task (and per block of the tokenized dataset)


def tokenize_rows(rows: list[dict], base_model: str, max_seq_len: int,
                  chat_template: str | None = None) -> TokenizedCorpus:
    """Tokenize ``rows`` (chat ``messages``) with the base model's tokenizer (and ``chat_template``) in a Ray
    Data plan, materialized; the preflight (first rows) runs here, with its figures and warnings logged."""
    check = preflight(load_tokenizer(base_model, chat_template), rows, max_seq_len)
    logger.info(
        "preflight: %.1f%% of tokens supervised, %.1f%% truncated; example %r -> loss on %r",
        100 * check["supervised_fraction"], 100 * check["truncation_rate"], check["example"],
        check["example_supervised"],
    )
    frame = pd.DataFrame({"index": np.arange(len(rows), dtype=np.int64),
                          "messages": [json.dumps(r[MESSAGES]) for r in rows]})
    blocks = [frame.iloc[i:i + ROWS_PER_BLOCK] for i in range(0, len(frame), ROWS_PER_BLOCK)]
    dataset = ray.data.from_pandas(blocks).map_batches(
        encode_batch, batch_format="pandas", batch_size=None,
        fn_kwargs={"base_model": base_model, "max_seq_len": max_seq_len, "chat_template": chat_template,
                   "stamp": signature(base_model)},
    ).materialize()
    small = dataset.select_columns(["index", "length", "supervised", "truncated", "digest"]).to_pandas()
    small = small.sort_values("index", kind="stable").reset_index(drop=True)
    if small["index"].tolist() != list(range(len(rows))):  # every row tokenized exactly once
        raise RuntimeError(f"tokenized {len(small)} rows of {len(rows)}")
    unsupervised = int((small["supervised"] == 0).sum())
    if unsupervised:
        logger.warning("%d of %d rows have no supervised token (they add no loss)", unsupervised, len(rows))
    truncated = int(small["truncated"].sum())
    if truncated:  # the cut is at the end: the row's final answer is what the student does not see
        logger.warning("%d of %d training rows are longer than train.max_seq_len=%d and were cut at the end (their "
                       "answers lost): raise train.max_seq_len or lower format.max_tokens", truncated, len(rows),
                       max_seq_len)
    figures = {
        "preflight_supervised_fraction": check["supervised_fraction"],
        "preflight_truncation_rate": check["truncation_rate"],
        "rows": len(rows),
        "truncated_rows": truncated,
        "unsupervised_rows": unsupervised,
    }
    return TokenizedCorpus(dataset, small["length"].tolist(), small["supervised"].tolist(), small["digest"].tolist(),
                           figures)


@functools.lru_cache(maxsize=4)
def _tokenizer(base_model: str, chat_template: str | None, stamp: tuple):
    # once per Ray worker process (~4 s: transformers' import), which a local cluster keeps between launches
    # (runtime.LOCAL_CLUSTER_ENV); ``stamp`` (the files' sizes and mtimes) tells a model saved again at the same
    # path from the one cached
    return load_tokenizer(base_model, chat_template)


def encode_batch(batch: pd.DataFrame, base_model: str, max_seq_len: int, chat_template: str | None,
                 stamp: tuple = ()) -> pd.DataFrame:
    """Ray Data batch function of :func:`tokenize_rows`: ``index``, ``messages`` (JSON) -> ``index``,
    ``input_ids``, ``labels`` (int32 arrays) and the per-row ``length``, ``supervised``, ``truncated``, ``digest``;
    ``stamp``: ``data.fs.signature(base_model)``."""
    tokenizer = _tokenizer(base_model, chat_template, stamp)
    examples = [encode_example(tokenizer, json.loads(m), max_seq_len) for m in batch["messages"]]
    return pd.DataFrame({
        "index": batch["index"].to_numpy(),
        "input_ids": [np.asarray(e["input_ids"], dtype=np.int32) for e in examples],
        "labels": [np.asarray(e["labels"], dtype=np.int32) for e in examples],
        "length": [len(e["input_ids"]) for e in examples],
        "supervised": [supervised_count(e) for e in examples],
        "truncated": [bool(e["truncated"]) for e in examples],
        "digest": [example_digest(e) for e in examples],
    })


def example_digest(example: dict) -> str:
    """A tokenized example's content hash (its token ids and labels), for :func:`fingerprint`."""
    text = f"{list(map(int, example['input_ids']))}|{list(map(int, example['labels']))}"
    return hashlib.sha1(text.encode("ascii")).hexdigest()


def fingerprint(jobs: list[list[str]], cfg: TrainConfig, base_model: str) -> str:
    """Short content hash of the training inputs (each job's examples by :func:`example_digest`, in order;
    recipe; base model). The ``OPERATIONAL`` settings are left out on purpose, and so is ``epochs`` for one job:
    rerunning with more epochs continues the same run. Not for several: a resume continues only the job its
    checkpoint belongs to, so the jobs before it would keep their old epoch count."""
    recipe = cfg.model_dump(mode="json", exclude={"epochs", *OPERATIONAL} if len(jobs) == 1 else OPERATIONAL)
    head = [recipe, base_model] if len(jobs) == 1 else [recipe, base_model, [len(x) for x in jobs]]
    h = hashlib.sha1(json.dumps(head, sort_keys=True).encode())
    for digest in (d for digests in jobs for d in digests):
        h.update(digest.encode("ascii"))
    return h.hexdigest()[:10]


def log_student(tracker, output_path: str, copy: bool = True) -> None:
    """The student as an MLflow artifact (``student/``) when ``copy`` and local; otherwise (a remote
    output, or an intermediate student) by its URL only, as the ``student_uri`` tag."""
    if copy and is_local(output_path):
        tracker.log_artifact(absolute(output_path), "student")
    else:
        tracker.set_tags({"student_uri": absolute(output_path)})


def job_spans(recorded: list[tuple[float, float]], t0: float, t_end: float) -> list[tuple[float, float]]:
    """Each job's (start, end) for its ``wall_s``/``startup_s``, from the (start, end) its worker recorded:
    the first job this launch ran starts at the launch (its start-up includes the worker group's) and the last
    one ends with it; a job done by an earlier launch (a resume) keeps its own span."""
    spans = list(recorded)
    ran = [j for j, (_, end) in enumerate(recorded) if end >= t0]
    if ran:
        spans[ran[0]] = (t0, spans[ran[0]][1])
        spans[ran[-1]] = (spans[ran[-1]][0], t_end)
    return spans


def final_metrics(reported: dict, figures: dict, t0: float, t_end: float) -> dict:
    """Rank 0's last report of a job plus timings: ``wall_s`` (``t0`` to ``t_end``: the launch, or the
    job's part of it, including startup and export) and ``startup_s`` (from ``t0`` to the first step)."""
    metrics = {**figures, **reported, "wall_s": t_end - t0}
    first = metrics.pop("first_step_unix", None)
    metrics["startup_s"] = first - t0 if first else float("nan")
    return metrics


def checkpoint_uri(result, storage_path: str) -> str | None:
    return None if result.checkpoint is None else storage_url(result.checkpoint.path, storage_path)
