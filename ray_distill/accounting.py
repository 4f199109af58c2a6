"""What a job spends: teacher and student tokens, wall time, reserved CPU/GPU seconds, and money.

    meter = ResourceMeter().start()          # polls Ray's resource view in a background thread
    before = meter.snapshot()
    ...                                      # a stage runs
    cpu_s, gpu_s = meter.since(before)       # CPU/GPU-seconds reserved by Ray work in between
    cost = token_cost(1_200_000, teacher.cost, teacher.resources)

Reserved seconds are what a cluster bills: the integral over time of the CPUs and GPUs that Ray
tasks and actors hold (``cluster_resources() - available_resources()``), sampled every
``interval_s``. The driver process itself reserves nothing and is not counted.

The budget, before anything is spent: :func:`estimate_generation` and :func:`estimate_judge` (a dry-run line
each, from what the generation store already holds), :func:`check_budget` (raises :class:`BudgetExceeded`) and
:func:`fixed_samples` (M as a per-question token cap lowers it).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ray_distill.config import CostConfig, JobConfig, ResourcesConfig, TeacherConfig
from ray_distill.errors import BudgetExceeded  # noqa: F401  (re-exported: callers import it from here)

if TYPE_CHECKING:
    from ray_distill.generation.store import GenerationStore

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


def fixed_samples(cfg: JobConfig, probe_length: float | None) -> int:
    """M, or fewer when the per-question token cap cannot pay for M samples of the expected length."""
    m, cap = cfg.selection.samples_per_question, cfg.budget.max_teacher_tokens_per_question
    if cap is None or not probe_length:
        return m
    fit = max(1, int(cap // probe_length))
    if fit < m:
        logger.warning("per-question cap of %d teacher tokens pays for %d of M=%d samples (~%.0f tokens each)",
                       cap, fit, m, probe_length)
    return min(m, fit)


def estimate_generation(store: GenerationStore, stage: str, questions: list[dict], teacher: TeacherConfig,
                        mean_length: float | None = None) -> StageEstimate:
    """Dry-run line for one generation call: requests, how many the store already has, expected tokens."""
    n = teacher.sampling.n
    cached = store.count_cached(questions, teacher, n) if questions else 0
    if mean_length is None:
        mean_length = store.mean_completion_tokens(teacher)
    return estimate(stage, teacher, len(questions), n, cached, mean_length)


def estimate_judge(store: GenerationStore, gen: StageEstimate, questions: list[dict], teacher: TeacherConfig,
                   judge, mean_length: float | None) -> StageEstimate:
    """Dry-run line for the judge's verdicts on one generation stage's samples: at most one call per sample
    (fallback mode judges only the rows math-verify cannot decide, and malformed rows are never judged); a
    sample already stored whose verdict is stored too costs nothing."""
    from ray_distill.curation.judge_stage import count_stored_verdicts  # the judge's store keys; Ray Data with it

    cached = count_stored_verdicts(store, judge, store.lookup(questions, teacher)) if questions else 0
    return estimate(f"{gen.stage}/judge", judge.as_teacher(), gen.questions, gen.samples_per_question, cached,
                    mean_length, role="judge")


def check_budget(cfg: JobConfig, estimates: list[StageEstimate], spent: float) -> None:
    """Raise :class:`BudgetExceeded` before spending when the expected tokens pass the job's cap."""
    cap = cfg.budget.max_teacher_tokens
    need = sum(e.expected_tokens for e in estimates)
    if cap is not None and spent + need > cap:
        what = ", ".join(f"{e.teacher}: {e.to_generate:,} samples x ~{e.tokens_per_sample:.0f} tokens" for e in estimates)
        raise BudgetExceeded(
            f"budget.max_teacher_tokens={cap:,}: {estimates[0].stage} would spend ~{need:,.0f} teacher tokens "
            f"({what}) after {spent:,.0f} already spent; raise the cap or shrink the job (see --dry-run)")
