"""Ray Data adapter for the generation engines: an actor pool of :class:`GenerateBatch` (for ``vllm``,
:class:`ContinuousGenerateBatch`: several batches in flight per actor in one continuously batched engine; for
``openai``, :class:`AsyncGenerateBatch`: several batches in flight sharing the engine's request slots).

    out = generate_dataset(ray.data.from_items(question_rows), teacher_cfg)   # rows = questions x n

Needs ``columns.QUESTION_COLUMNS``; produces ``columns.GENERATION_COLUMNS`` (other input columns are
carried through unchanged). Each question row becomes ``sampling.n`` rows, or exactly one row when
the input already has a ``sample_index`` column (the generation store asks for missing samples
that way). The seed of a sample depends only on (base seed, question id, sample index), so results
do not depend on batching or on which actor ran the batch.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import logging
import os
import random

import numpy as np
import pandas as pd
import ray.data
from pydantic import SecretStr

from ray_distill import columns as C
from ray_distill.config import EngineConfig, SamplingConfig, TeacherConfig
from ray_distill.generation.engines import build_engine, question_messages, resolve_api_key
from ray_distill.generation.types import Completion

logger = logging.getLogger(__name__)

# Question columns a row may lack, with their default (math questions carry no code tests; without a
# prompt template the prompt is the question itself).
OPTIONAL_QUESTION_COLUMNS = {C.TESTS: "", C.PROMPT: None}

# vLLM's CPU backend inside Ray actors: small KV cache (several engines may share the machine) and
# no OpenMP thread pinning (Ray already places the actor), and the engine core in the actor's own
# process: a spawned engine-core process re-imports vLLM and costs ~15 s per engine start on CPU.
VLLM_CPU_ENV_DEFAULTS = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}


def vllm_cpu_env() -> dict:
    """The ``runtime_env`` of a vLLM process without a GPU: :data:`VLLM_CPU_ENV_DEFAULTS`, this environment's own
    values first."""
    return {"env_vars": {k: os.environ.get(k, v) for k, v in VLLM_CPU_ENV_DEFAULTS.items()}}


def free_engine_memory() -> None:
    """After a vLLM engine of this process was shut down and dropped: collect it, and on a GPU free its device
    memory and distributed state the way vLLM's own tests do between two engines of one process (best effort: the
    next engine's own checks report a real shortage)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
    except Exception:
        logger.warning("freeing a previous vLLM engine's device memory failed", exc_info=True)


def with_question_defaults(df: pd.DataFrame, what: str) -> pd.DataFrame:
    """``df`` with every question column: optional ones (:data:`OPTIONAL_QUESTION_COLUMNS`) are filled
    with their default, a missing required one is an error."""
    missing = [c for c in C.QUESTION_COLUMNS if c not in df.columns and c not in OPTIONAL_QUESTION_COLUMNS]
    if missing:
        raise ValueError(f"{what} needs columns {missing}; got {list(df.columns)}")
    absent = {c: v for c, v in OPTIONAL_QUESTION_COLUMNS.items() if c not in df.columns}
    df = df.assign(**absent) if absent else df
    if df[C.PROMPT].isna().any():
        df = df.assign(**{C.PROMPT: df[C.PROMPT].where(df[C.PROMPT].notna(), df[C.QUESTION])})
    return df


def sample_seed(base_seed: int, question_id: str, sample_index: int) -> int:
    """The seed of sample ``sample_index`` of a question, a 31-bit int independent of batching."""
    digest = hashlib.sha256(f"{base_seed}:{question_id}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class GenerateBatch:
    """Callable class for ``map_batches``: the engine is built once per actor, in the constructor; one
    batch at a time (for ``vllm``, one synchronous wave; see :class:`ContinuousGenerateBatch`)."""

    def __init__(self, teacher_name: str, engine: dict, sampling: dict, api_key: SecretStr | None = None):
        self.teacher = teacher_name
        self.sampling = SamplingConfig.model_validate(sampling)
        self.engine = self._build(EngineConfig.model_validate(engine), api_key)

    def _build(self, cfg: EngineConfig, api_key: SecretStr | None):
        return build_engine(cfg, api_key)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch, indices, seeds, messages = self.requests(batch)
        return self.rows(batch, indices, seeds, self.engine.generate(messages, self.sampling, seeds))

    def requests(self, batch: pd.DataFrame) -> tuple[pd.DataFrame, list[list[int]], list[list[int]], list[list[dict]]]:
        """The batch with its question defaults, and per row: sample indices, their seeds, chat messages."""
        batch = with_question_defaults(batch, "generation")
        if C.SAMPLE_INDEX in batch.columns:
            indices = [[int(i)] for i in batch[C.SAMPLE_INDEX]]
        else:
            indices = [list(range(self.sampling.n))] * len(batch)
        seeds = [
            [sample_seed(self.sampling.seed, str(qid), i) for i in idx]
            for qid, idx in zip(batch[C.QUESTION_ID], indices)
        ]
        messages = [question_messages(q) for q in batch[C.PROMPT]]
        return batch, indices, seeds, messages

    def rows(self, batch: pd.DataFrame, indices: list[list[int]], seeds: list[list[int]],
             completions: list[list[Completion]]) -> pd.DataFrame:
        """Generation rows: each input row repeated once per sample, with its completion."""
        if [len(c) for c in completions] != [len(s) for s in seeds]:
            raise RuntimeError(f"engine returned {[len(c) for c in completions]} completions for {len(seeds)} prompts")

        flat = [c for per_prompt in completions for c in per_prompt]
        out = batch.iloc[np.repeat(np.arange(len(batch)), [len(s) for s in seeds])].reset_index(drop=True)
        out[C.TEACHER] = self.teacher
        out[C.SAMPLE_INDEX] = [i for idx in indices for i in idx]
        out[C.SEED] = [s for per_prompt in seeds for s in per_prompt]
        out[C.COMPLETION] = [c["text"] for c in flat]
        out[C.NUM_TOKENS] = [c["num_tokens"] for c in flat]
        out[C.FINISH_REASON] = [c["finish_reason"] for c in flat]
        out[C.ERROR] = [c["error"] for c in flat]
        out[C.PROMPT_TOKENS] = [c["prompt_tokens"] for c in flat]
        failed = int((out[C.ERROR] != "").sum())
        if failed:
            logger.warning("%s: %d of %d requests failed, e.g. %s", self.teacher, failed, len(out),
                           out.loc[out[C.ERROR] != "", C.ERROR].iloc[0])
        extras = [c for c in batch.columns if c not in C.GENERATION_COLUMNS]
        return out[[*C.GENERATION_COLUMNS, *extras]]


class ContinuousGenerateBatch(GenerateBatch):
    """``vllm`` with continuous batching: an async ``__call__``, so Ray Data runs several batches of one
    actor at once (``engine.max_concurrent_batches``, the actor's ``max_concurrency``) and their requests
    share one continuously batched engine (:mod:`.continuous`); a batch's rows are returned when its
    own requests finish."""

    def _build(self, cfg: EngineConfig, api_key: SecretStr | None):
        from ray_distill.generation.continuous import ContinuousVLLMEngine

        return ContinuousVLLMEngine(cfg)

    async def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch, indices, seeds, messages = self.requests(batch)
        return self.rows(batch, indices, seeds, await self.engine.generate_async(messages, self.sampling, seeds))


class HostedGenerateBatch(GenerateBatch):
    """A long-lived engine's stage actor (:mod:`.hosts`): it builds no engine and forwards each batch to one of
    ``hosts`` (in turn), which serve ``engine``; several batches in flight, like the engine's own."""

    def __init__(self, teacher_name: str, engine: dict, sampling: dict, hosts: list):
        self.teacher = teacher_name
        self.sampling = SamplingConfig.model_validate(sampling)
        self.hosts, self.engine_dump = list(hosts), engine
        self.key = engine_key(EngineConfig.model_validate(engine))
        self.turn = itertools.count(random.randrange(len(self.hosts)))

    async def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch, indices, seeds, messages = self.requests(batch)
        host = self.hosts[next(self.turn) % len(self.hosts)]
        completions = await host.generate.remote(self.key, self.engine_dump, messages, self.sampling.model_dump(),
                                                 seeds)
        return self.rows(batch, indices, seeds, completions)


class AsyncGenerateBatch(GenerateBatch):
    """``openai``: an async ``__call__``, so Ray Data runs several batches of one actor at once
    (``engine.max_concurrent_batches``); their requests share the engine's ``max_concurrency`` slots, and the slot a
    finished request frees starts the next one of any batch: no batch waits for another's slowest request."""

    async def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch, indices, seeds, messages = self.requests(batch)
        return self.rows(batch, indices, seeds, await self.engine.generate_async(messages, self.sampling, seeds))


def batch_class(engine: EngineConfig) -> type[GenerateBatch]:
    """The ``map_batches`` class for ``engine``: continuous batching for ``vllm`` and several batches in flight for
    ``openai`` unless ``max_concurrent_batches`` is 0; every other engine one batch at a time."""
    if engine.max_concurrent_batches > 0 and engine.kind in ("vllm", "openai"):
        return ContinuousGenerateBatch if engine.kind == "vllm" else AsyncGenerateBatch
    return GenerateBatch


def engine_runtime_env(teacher: TeacherConfig) -> dict | None:
    """Environment for the engine actors: vLLM-on-CPU settings when the actor has no GPU."""
    if teacher.engine.kind != "vllm" or teacher.resources.num_gpus > 0:
        return None
    return vllm_cpu_env()


def engine_pool(teacher: TeacherConfig, concurrent_batches: int | None = None) -> dict:
    """``map_batches`` arguments of an engine actor pool (teachers, the student, the judge): its actors,
    their resources, the engine batch and the vLLM-on-CPU environment; ``concurrent_batches`` batches in
    flight per actor (an async ``map_batches`` class; None: Ray Data's default, one for a plain class)."""
    res = teacher.resources
    compute = ray.data.ActorPoolStrategy(size=res.num_actors, max_concurrent_calls_per_actor=concurrent_batches)
    return {"compute": compute, "num_cpus": res.num_cpus,
            "num_gpus": res.num_gpus, "batch_size": res.batch_size, "batch_format": "pandas",
            "runtime_env": engine_runtime_env(teacher), "resources": dict(res.custom_resources) or None}


def engine_key(engine: EngineConfig) -> str:
    """What an engine is built from: two configs with the same key serve the same model the same way."""
    return hashlib.sha1(json.dumps(engine.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def generate_dataset(questions: ray.data.Dataset, teacher: TeacherConfig,
                     hosts: list | None = None) -> ray.data.Dataset:
    """Lazily map question rows to generation rows through an actor pool of ``teacher``'s engine, or, given
    the engine ``hosts`` serving it (:mod:`.hosts`), through actors that forward to them and hold no resources.
    An API key is read here, in the driver (a missing variable fails before any actor starts), and
    handed to the actors as a SecretStr."""
    if hosts:
        concurrent = max(1, teacher.engine.max_concurrent_batches)
        return questions.map_batches(
            HostedGenerateBatch,
            fn_constructor_kwargs={"teacher_name": teacher.name, "engine": teacher.engine.model_dump(),
                                   "sampling": teacher.sampling.model_dump(), "hosts": hosts},
            compute=ray.data.ActorPoolStrategy(size=len(hosts), max_concurrent_calls_per_actor=concurrent),
            num_cpus=0, batch_size=teacher.resources.batch_size, batch_format="pandas")
    api_key = resolve_api_key(teacher.engine) if teacher.engine.kind == "openai" else None
    cls = batch_class(teacher.engine)
    concurrent = teacher.engine.max_concurrent_batches if cls in (ContinuousGenerateBatch, AsyncGenerateBatch) else None
    return questions.map_batches(
        cls,
        fn_constructor_kwargs={
            "teacher_name": teacher.name,
            "engine": teacher.engine.model_dump(),
            "sampling": teacher.sampling.model_dump(),
            "api_key": api_key,
        },
        **engine_pool(teacher, concurrent),
    )
