"""The job's evaluation: its models scored on its suites with the job's settings (each suite's own k,
temperature, max_tokens, pass_k and finished-only rule), logged to its runs; and the base student's graded
samples that compression reads its pass rates from. Every sample goes through the job's generation store.

    scores = evaluate(cfg, model, suites, tracker, prefix="after")   # {suite: {"avg_at_k": ..., "ci_low": ...}}
    rates = student_pass_rates(cfg, pool, base)                        # question_id, n, n_correct, pass_rate
"""

from __future__ import annotations

import functools
import logging
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from ray_distill import columns as C
from ray_distill.config import JobConfig, SuiteConfig
from ray_distill.curation.compression import pass_rates
from ray_distill.data.fs import join
from ray_distill.evaluation.evaluate import evaluate_suites, grade_samples, sample_student
from ray_distill.evaluation.harness import run_harness_all
from ray_distill.evaluation.metrics import macro_average
from ray_distill.generation.store import GenerationStore
from ray_distill.progress import StageRecord
from ray_distill.tracking import Tracker

logger = logging.getLogger(__name__)


def evaluate(cfg: JobConfig, model: str, suites: dict[str, list[dict]], t: Tracker, prefix: str,
             rec: StageRecord | None = None) -> dict[str, dict]:
    """``model`` scored on ``suites`` (``evaluate_suites`` through the student store), logged to ``t`` as
    ``<prefix>/<suite>/<metric>`` and the macro averages; ``{}`` without suites."""
    return evaluate_all(cfg, [(model, t, prefix)], suites, rec)[0]


def at_once(fn, items: list) -> list:
    """``[fn(x) for x in items]``, each in a thread of its own (each waits on its own Ray work: engine actors,
    harness tasks); one item runs in this thread."""
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="evaluate") as pool:
        return list(pool.map(fn, items))


def evaluate_all(cfg: JobConfig, runs: list[tuple[str, Tracker, str]], suites: dict[str, list[dict]],
                 rec: StageRecord | None = None) -> list[dict[str, dict]]:
    """:func:`evaluate` of every ``(model, tracker, prefix)``, logged one after the other from this thread. With
    long-lived engines (``student.serving.long_lived``) the models are sampled one after the other, each on all
    the engine hosts (inside ``generation.hosts.keep_engines`` the same hosts, each model swapped in in seconds);
    otherwise concurrently, one engine actor pool each (their start-ups, mostly a fresh process importing vLLM,
    overlap)."""
    if not suites:
        logger.warning("no evaluation suites configured: %s evaluation skipped", ", ".join(p for _, _, p in runs))
        return [{} for _ in runs]
    models = list(dict.fromkeys(model for model, _, _ in runs))  # a model named twice is sampled once
    score = functools.partial(score_model, cfg, suites=suites)
    one_by_one = cfg.student.serving.long_lived
    sampled = dict(zip(models, [score(m) for m in models] if one_by_one else at_once(score, models)))
    return [_log_scores(cfg, t, prefix, suites, *sampled[model], rec) for model, t, prefix in runs]


def finished_only(cfg: JobConfig, suite: SuiteConfig | None) -> bool:
    """Whether an answer inside unfinished reasoning (an unclosed think block) scores wrong on ``suite``: its own
    ``finished_only``, else the job's ``format.require_think`` (a job of reasoning responses is strict everywhere:
    curation, pass rates, the dev suite and evaluation; one that relaxed the think format grades whole texts)."""
    if suite is not None and suite.finished_only is not None:
        return suite.finished_only
    return cfg.format.require_think


def _configured_suites(cfg: JobConfig) -> dict[str, SuiteConfig]:
    return {s.name: s for s in [*cfg.eval.suites, *([cfg.dev.suite] if cfg.dev.suite else [])]}


def score_model(cfg: JobConfig, model: str, suites: dict[str, list[dict]]) -> tuple[dict[str, dict], GenerationStore]:
    e = cfg.eval
    store = student_store(cfg)
    configured = _configured_suites(cfg)
    settings = {name: e.sampling(configured[name]) for name in suites if name in configured}
    pass_k = {name: configured[name].pass_k for name in suites if name in configured}
    finished = {name: finished_only(cfg, configured.get(name)) for name in suites}
    scores = evaluate_suites(model, suites, e.k, e.temperature, e.max_tokens, seed=cfg.seed, student=cfg.student,
                             code=cfg.format.code.model_dump(), settings=settings, pass_k=pass_k, store=store,
                             finished_only=finished)
    return scores, store


def _log_scores(cfg: JobConfig, t: Tracker, prefix: str, suites: dict[str, list[dict]], scores: dict[str, dict],
                store: GenerationStore, rec: StageRecord | None) -> dict[str, dict]:
    log_student_counters(t, store, prefix)
    if rec is not None:
        rec.student_tokens += int(sum(m.get("tokens", m["mean_length"] * m["k"] * m["n_questions"])
                                      for m in scores.values()))
    t.log_metrics({f"{prefix}/{suite}/{k}": v for suite, m in scores.items() for k, v in m.items()
                   if isinstance(v, (int, float))})
    configured = _configured_suites(cfg)
    domains = {name: configured[name].domain for name in suites if name in configured}
    t.log_metrics({f"{prefix}/macro_{group}/avg_at_k": v for group, v in macro_average(scores, domains).items()})
    return scores


def evaluate_harness(cfg: JobConfig, models: dict[str, str], t: Tracker) -> dict[str, dict[str, dict[str, float]]]:
    """``eval.harness``: lm-evaluation-harness tasks on every model of ``{prefix: model}`` (``evaluation.harness``:
    on CPUs in one process, on GPUs concurrently), logged one after the other as ``<prefix>/harness/<task>/<metric>``
    beside the suites' scores; ``{prefix: {}}`` when not configured."""
    if cfg.eval.harness is None:
        return {prefix: {} for prefix in models}
    ran = dict(zip(models, run_harness_all(list(models.values()), cfg.eval.harness, cfg.student)))
    for prefix, scores in ran.items():
        t.log_metrics({f"{prefix}/harness/{task}/{m}": v for task, ms in scores.items() for m, v in ms.items()})
        t.log_table(pd.DataFrame([{"task": task, "metric": m, "value": v} for task, ms in scores.items()
                                  for m, v in ms.items()]), f"harness_{prefix}.json")
    return ran


def macro_scores(cfg: JobConfig, before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict[str, float]]:
    """``{"before"|"after": {"all"|"in_domain"|"ood": macro avg@k}}``: each suite counts once."""
    domains = {s.name: s.domain for s in cfg.eval.suites}
    return {"before": macro_average(before, domains), "after": macro_average(after, domains)}


def in_domain_score(cfg: JobConfig, scores: dict[str, dict]) -> float:
    names = [s.name for s in cfg.eval.suites if s.domain == "in_domain"]
    return _mean_score({n: scores[n] for n in names if n in scores})


def _mean_score(scores: dict[str, dict]) -> float:
    vals = [m["avg_at_k"] for m in scores.values()]
    return float(sum(vals) / len(vals)) if vals else float("nan")


def student_pass_rates(cfg: JobConfig, pool: list[dict], base: str, rec: StageRecord | None = None) -> pd.DataFrame:
    """Per question: the base student's pass rate over k vLLM samples (same grader as everywhere); the samples'
    tokens are counted to ``rec``'s stage, as the job's compress stage counts them."""
    samples = student_samples(cfg, pool, base)
    if rec is not None:
        rec.student_tokens += int(samples[C.NUM_TOKENS].sum())
    return pass_rates(samples)


def student_samples(cfg: JobConfig, pool: list[dict], base: str, store: GenerationStore | None = None) -> pd.DataFrame:
    """k graded vLLM samples of the base student per question (compression's evidence), from the job's
    generation store when it has them."""
    c = cfg.compression
    return grade_samples(sample_student(pool, base, c.k, c.temperature, c.max_tokens, seed=cfg.seed,
                                        student=cfg.student, store=store or student_store(cfg)),
                         cfg.format.code.model_dump(), finished_only=cfg.format.require_think)


def student_store(cfg: JobConfig) -> GenerationStore:
    """The job's generation store, where student samples are kept like the teachers' (under ``student``)."""
    return GenerationStore(join(cfg.storage, "generations"))


def log_student_counters(t: Tracker, store: GenerationStore, prefix: str) -> None:
    """``<prefix>/student_generated`` and ``_cached``: 0 generated on a rerun (the store had them all)."""
    totals = store.totals["student"]
    t.log_metrics({f"{prefix}/student_{k}": int(totals[k]) for k in ("generated", "cached")})
