"""What a job spends: teacher and student tokens, wall time, reserved CPU/GPU seconds, and money.

    meter = ResourceMeter().start()          # polls Ray's resource view in a background thread
    before = meter.snapshot()
    ...                                      # a stage runs
    cpu_s, gpu_s = meter.since(before)       # CPU/GPU-seconds reserved by Ray work in between
    cost = token_cost(1_200_000, teacher.cost, teacher.resources)

Reserved seconds are what a cluster bills: the integral over time of the CPUs and GPUs that Ray
tasks and actors hold (``cluster_resources() - available_resources()``), sampled every
``interval_s``. The driver process itself reserves nothing and is not counted.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from ray_distill.config import CostConfig, ResourcesConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Usage:
    cpu_s: float = 0.0
    gpu_s: float = 0.0


class ResourceMeter:
    """Integrates the CPUs and GPUs held by Ray work over time (see the module docstring)."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self._cpu_s = self._gpu_s = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ResourceMeter:
        self._thread = threading.Thread(target=self._run, name="ray-distill-resource-meter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def snapshot(self) -> Usage:
        with self._lock:
            return Usage(self._cpu_s, self._gpu_s)

    def since(self, before: Usage) -> Usage:
        now = self.snapshot()
        return Usage(now.cpu_s - before.cpu_s, now.gpu_s - before.gpu_s)

    def _run(self) -> None:
        import ray

        last = time.monotonic()
        while not self._stop.wait(self.interval_s):
            now = time.monotonic()
            try:
                if not ray.is_initialized():
                    last = now
                    continue
                total, free = ray.cluster_resources(), ray.available_resources()
            except Exception as err:  # a transient GCS hiccup must not kill the job
                logger.debug("resource meter: %s", err)
                last = now
                continue
            held_cpu = max(0.0, total.get("CPU", 0.0) - free.get("CPU", 0.0))
            held_gpu = max(0.0, total.get("GPU", 0.0) - free.get("GPU", 0.0))
            with self._lock:
                self._cpu_s += held_cpu * (now - last)
                self._gpu_s += held_gpu * (now - last)
            last = now


def token_cost(tokens: float, cost: CostConfig, resources: ResourcesConfig) -> float:
    """Money for ``tokens`` teacher completion tokens: per-token price plus, when the actor
    throughput is known, GPU-hours at ``per_gpu_hour`` (GPUs per actor x hours of generation)."""
    money = tokens / 1e6 * cost.per_million_tokens
    if cost.per_gpu_hour and cost.tokens_per_s_per_actor:
        gpu_hours = tokens / cost.tokens_per_s_per_actor / 3600 * resources.num_gpus
        money += gpu_hours * cost.per_gpu_hour
    return money


@dataclass(frozen=True)
class StageEstimate:
    """A dry-run line: what one generation stage would ask a teacher (or the LLM judge) for, before any token
    is spent."""

    stage: str
    teacher: str
    questions: int
    samples_per_question: int
    requests: int  # question x sample pairs
    cached: int  # already in the generation store: free
    tokens_per_sample: float  # expected completion tokens (stored mean, else max_tokens)
    length_source: str  # "store" | "max_tokens"
    max_tokens: int
    cost_per_million: float  # of the expected tokens' cost, per million tokens (for the table)
    expected_cost: float
    role: str = "teacher"  # "teacher" | "judge" (judge lines: verdicts on that stage's samples, an upper bound)

    @property
    def to_generate(self) -> int:
        return self.requests - self.cached

    @property
    def expected_tokens(self) -> float:
        return self.to_generate * self.tokens_per_sample

    @property
    def max_tokens_total(self) -> int:
        return self.to_generate * self.max_tokens


def estimate(stage: str, teacher, questions: int, samples_per_question: int, cached: int,
             mean_length: float | None, role: str = "teacher") -> StageEstimate:
    """One :class:`StageEstimate`; ``mean_length`` is the teacher's stored mean completion length."""
    requests = questions * samples_per_question
    per_sample = float(mean_length) if mean_length else float(teacher.sampling.max_tokens)
    tokens = (requests - cached) * per_sample
    money = token_cost(tokens, teacher.cost, teacher.resources)
    return StageEstimate(
        stage=stage, teacher=teacher.name, questions=questions, samples_per_question=samples_per_question,
        requests=requests, cached=cached, tokens_per_sample=per_sample,
        length_source="store" if mean_length else "max_tokens", max_tokens=teacher.sampling.max_tokens,
        cost_per_million=money / tokens * 1e6 if tokens else 0.0, expected_cost=money, role=role,
    )


class BudgetExceeded(RuntimeError):
    """Spending would pass a configured teacher-token cap; raised before the tokens are spent."""
