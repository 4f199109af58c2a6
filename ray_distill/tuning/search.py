"""Data-budget search with Ray Tune on stored generations.

    ray-distill tune jobs/quickstart_tune.yaml

The driver prepares everything that does not depend on the budget once — base student, questions,
student pass rates (once per searched ``compression.k``/``temperature``/``max_tokens``), the teacher
samples of every question a trial may keep (read from the generation store: M of each, for the
largest M searched; generated only with ``tune.top_up``, else a store that lacks some is refused:
never a silently smaller M), verdicts (once per searched ``format.*``), the base student's score — then
Tune runs the trials (``tuning.trial``: curation → SFT inside the trial → evaluation), searched on a
grid or by Optuna, with ASHA stopping poor trials early on epochs. Trials and the baseline are scored
on the dev suite (``dev``), never on the eval suites: those are what ``ray-distill run best_job.yaml``
reports, once, for the chosen budget (scoring them in every trial would cost an evaluation per rung
and invite choosing on them). Every trial is a nested MLflow run,
a failing one included (status FAILED, error logged); the search goes on. The result is the trial
table, the Pareto front of score vs corpus size, the best configuration written out as a job YAML,
and ``search/teacher_tokens_generated``, the teacher tokens the store reports having generated
during the search (0 when it already held every sample). ``tune.metric`` (``tune.mode``) ranks the
trials for Tune, ASHA and the best-trial choice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd
import yaml

from ray_distill import columns as C
from ray_distill.config import ConfigError, JobConfig, TeacherConfig
from ray_distill.data.fs import absolute, join, write_text
from ray_distill.generation.store import GenerationStore
from ray_distill.progress import StageRunner
from ray_distill.tracking import MLflowTracker, Tracker, TrackerHandle
from ray_distill.tuning.pareto import pareto_front, plot_front
from ray_distill.tuning.space import (TEACHER, best_job_tree, candidate_questions, check_space, choices,
                                      param_space, teacher_names, trial_config, variant_id, variants)
from ray_distill.tuning.trial import CORPUS_SHA256, EPOCHS, METRICS, RUN_ID, dev_metrics, trial

logger = logging.getLogger(__name__)

TRIAL_METRICS = ["score", "score_ci_low", "score_ci_high", "pass_at_k", "mean_length", "corpus_rows",
                 "corpus_questions", "corpus_tokens", "mean_distance_selected", "mean_distance_all_correct"]


@dataclass
class SearchResult:
    trials: pd.DataFrame
    best_config: dict
    best_score: float  # the best trial's tune.metric
    best_job_path: str
    front: pd.DataFrame
    counters: dict = field(default_factory=dict)  # search/teacher_tokens_generated, ...
    baseline: dict = field(default_factory=dict)  # the base student's dev-suite scores (before training)


def run_search(cfg: JobConfig, tracker: Tracker, runner: StageRunner) -> SearchResult:
    from ray_distill import pipeline as P
    from ray_distill.evaluation.evaluate import evaluate_suites
    from ray_distill.runtime import init_ray

    check_space(cfg, METRICS)
    init_ray(cfg)
    cfg = P.resolve_models(cfg)
    store = GenerationStore(join(cfg.storage, "generations"))
    job = cfg.model_dump(mode="json")

    base, pool, _, dev = P.student_and_questions(cfg, runner)
    rates = {}  # one pass-rate table per searched compression.k/temperature/max_tokens combination
    for v in variants(cfg, "rates"):
        with runner.stage("pass_rates" + "".join(f"/{k.rsplit('.', 1)[-1]}={x}" for k, x in v.items()),
                          rows_in=len(pool)) as (t, rec):
            rates[variant_id(v, list(v))] = table = P.student_pass_rates(trial_config(job, v), pool, base)
            rec.notes["mean_pass_rate"] = float(table[C.PASS_RATE].mean())
    candidates = candidate_questions(cfg, pool, rates)
    m_max = max(choices(cfg, "selection.samples_per_question"))
    all_names = [t.name for t in cfg.teachers]
    names = {n for c in cfg.tune.search_space.get(TEACHER, [None]) for n in teacher_names(c, all_names)}
    graded: dict[str, dict[str, pd.DataFrame]] = {}  # teacher -> verdict variant id -> graded samples
    counters = {"search/teacher_rows_generated": 0, "search/teacher_tokens_generated": 0}
    for teacher in (t for t in cfg.teachers if t.name in names):
        with runner.stage(f"samples/{teacher.name}", rows_in=len(candidates) * m_max) as (t, rec):
            samples, spent = teacher_samples(store, candidates, teacher, m_max, cfg.tune.top_up)
            counters["search/teacher_rows_generated"] += spent["generated"]
            counters["search/teacher_tokens_generated"] += spent["completion_tokens"]
            rec.teacher_tokens += spent["completion_tokens"]
            counters[f"search/store_coverage/{teacher.name}"] = len(samples) / max(1, len(candidates) * m_max)
            graded[teacher.name] = {variant_id(v, list(v)): P.verify(trial_config(job, v), samples, base, t, rec)
                                    for v in variants(cfg, "verdicts")}
            rec.rows_out = len(samples)
    tracker.log_metrics(counters)
    logger.info("teacher tokens generated for the search: %d", counters["search/teacher_tokens_generated"])
    with runner.stage("evaluate_base") as (t, rec):
        e = cfg.eval
        (m,) = evaluate_suites(base, dev, e.k, e.temperature, e.max_tokens, seed=cfg.seed, student=cfg.student,
                               code=cfg.format.code.model_dump()).values()
        baseline = dev_metrics(m)
        t.log_metrics({f"before/{k}": v for k, v in baseline.items()})
        rec.notes["score"] = baseline["score"]
    work = join(absolute(cfg.run_dir), "tune")
    # the trials' inputs travel through Ray's object store (tune.with_parameters), not the driver's disk
    inputs = {"pool": pool, "rates": rates, "graded": graded, "dev": dev}
    with runner.stage("search") as (t, rec):
        trials = run_tuner(cfg, base, inputs, t.handle(), work)
        rec.rows_out = len(trials)
        rec.notes["failed_trials"] = int((trials["status"] == "failed").sum())
    return summarise(cfg, trials, tracker, counters, baseline)


def teacher_samples(store: GenerationStore, questions: list[dict], teacher: TeacherConfig, m: int,
                    top_up: bool) -> tuple[pd.DataFrame, dict[str, int]]:
    """(samples 0..m-1 of every question, the store's counters of this read: ``generated`` samples and
    their ``completion_tokens``). With ``top_up`` the store generates what it lacks; without, a store
    that lacks some is refused (a trial would silently curate from fewer than M samples)."""
    if not top_up:
        held = store.lookup(questions, teacher, m)
        want = len(questions) * m
        if len(held) < want:
            short = len(questions) - int((held.groupby(C.QUESTION_ID).size() >= m).sum())
            raise ConfigError(
                f"selection.samples_per_question: M={m} needs {want} samples of teacher {teacher.name!r} for the "
                f"{len(questions)} questions this search may keep; the generation store {store.root} holds "
                f"{len(held)} ({short} questions short): set tune.top_up: true to generate them (counted in "
                "teacher tokens), search a smaller M, or run the job first")
    samples, counters = store.get_or_generate(questions, teacher, n=m)  # generates only what is missing
    failed = samples[samples[C.ERROR] != ""]
    if len(failed):
        logger.warning("%d of %d samples of %s failed to generate: %s", len(failed), len(samples), teacher.name,
                       failed[C.ERROR].iloc[0][:200])
    return samples[samples[C.ERROR] == ""], {"generated": int(counters["generated"]),
                                             "completion_tokens": int(counters["completion_tokens"])}


def run_tuner(cfg: JobConfig, base: str, inputs: dict, handle: TrackerHandle | None, work: str) -> pd.DataFrame:
    """Run the trials; one row per trial (params, status, epochs reached, last reported figures, error).
    Closes the MLflow runs of trials that ASHA stopped (their process ends without closing them)."""
    from ray import tune

    t = cfg.tune
    tune_cfg = tune.TuneConfig(metric=t.metric, mode=t.mode, max_concurrent_trials=t.max_concurrent_trials,
                               num_samples=t.num_samples if t.search == "optuna" else 1)
    if t.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        tune_cfg.search_alg = OptunaSearch(points_to_evaluate=t.points_to_evaluate or None, seed=cfg.seed)
    if t.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        tune_cfg.scheduler = ASHAScheduler(time_attr=EPOCHS, max_t=cfg.train.epochs, grace_period=t.grace_period,
                                           reduction_factor=t.reduction_factor)
    trainable = tune.with_parameters(trial, job=cfg.model_dump(mode="json"), base=base, inputs=inputs, handle=handle)
    tuner = tune.Tuner(
        tune.with_resources(trainable, t.trial_resources),
        param_space=param_space(t),
        tune_config=tune_cfg,
        run_config=tune.RunConfig(name="search", storage_path=work, verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=t.max_failures)),
    )
    rows = [trial_row(cfg, r) for r in tuner.fit()]
    for row in rows:
        run_id = row.pop(RUN_ID)
        if handle and run_id and row["status"] != "failed":
            close_run(handle.tracking_uri, run_id, row[EPOCHS], row["status"])
    return pd.DataFrame(rows)


def trial_row(cfg: JobConfig, result) -> dict:
    metrics = result.metrics or {}
    row = {"trial_id": metrics.get("trial_id", ""), **{k: result.config.get(k) for k in cfg.tune.search_space}}
    row.update({k: metrics.get(k, float("nan")) for k in dict.fromkeys([*TRIAL_METRICS, cfg.tune.metric])})
    row[CORPUS_SHA256] = metrics.get(CORPUS_SHA256, "")
    row[EPOCHS] = int(metrics.get(EPOCHS, 0))
    row["status"] = "failed" if result.error else ("stopped_early" if row[EPOCHS] < cfg.train.epochs else "finished")
    row["error"] = str(result.error).strip().splitlines()[0] if result.error else ""
    row[RUN_ID] = metrics.get(RUN_ID, "")
    return row


def close_run(tracking_uri: str, run_id: str, epochs: int, status: str) -> None:
    """Record the epochs a trial reached and its status, and mark its run FINISHED (Tune ends a
    trial's process at its last report, ASHA also between rungs, before the trial closes its run)."""
    run = MLflowTracker(tracking_uri, run_id)
    run.set_tags({"ray_distill.trial_status": status})
    run.log_metrics({"epochs_reached": epochs, "stopped_early": float(status == "stopped_early")})
    if run.client.get_run(run_id).info.status == "RUNNING":
        run.end()


def summarise(cfg: JobConfig, trials: pd.DataFrame, tracker: Tracker, counters: dict, baseline: dict) -> SearchResult:
    """The best trial by ``tune.metric`` (``tune.mode``; ties: the smaller corpus), its job YAML, and the
    Pareto front of that metric vs corpus rows."""
    metric, sign = cfg.tune.metric, (1.0 if cfg.tune.mode == "max" else -1.0)
    ok = trials[trials["status"] != "failed"].dropna(subset=[metric])
    tracker.log_table(trials, "trials.json")
    status = trials["status"].value_counts()
    tracker.log_metrics({"search/trials": len(trials), "search/failed_trials": int(status.get("failed", 0)),
                         "search/stopped_early": int(status.get("stopped_early", 0))})
    if ok.empty:
        first = trials["error"].iloc[0] if len(trials) else "no trials"
        raise RuntimeError(f"every trial failed; first error: {first}")
    objective = ok.assign(_objective=sign * ok[metric].astype(float))
    best = objective.sort_values(["_objective", "corpus_rows"], ascending=[False, True]).iloc[0]
    best_config = {k: _py(best[k]) for k in cfg.tune.search_space}
    best_path = join(cfg.run_dir, "best_job.yaml")
    write_text(best_path, yaml.safe_dump(best_job_tree(cfg, best_config), sort_keys=False))
    front = ok.loc[pareto_front(objective, score="_objective", cost="corpus_rows").index]
    tracker.log_table(front, "pareto_front.json")
    tracker.log_figure(plot_front(ok, front, score=metric, cost="corpus_rows",
                                  baseline=baseline.get(metric)), "pareto_front.png")
    tracker.log_metrics({"best_score": float(best[metric]), "best_corpus_rows": float(best["corpus_rows"])})
    tracker.set_tags({"ray_distill.best_metric": metric})
    if "://" not in best_path:
        tracker.log_artifact(best_path)
    return SearchResult(trials, best_config, float(best[metric]), best_path, front, counters, baseline)


def _py(v):
    return v.item() if hasattr(v, "item") else v
