"""Data-budget search with Ray Tune on stored generations.

    ray-distill tune jobs/quickstart_tune.yaml

The driver prepares everything that does not depend on the budget once — base student, questions,
student pass rates (once per searched ``compression.k``/``temperature``/``max_tokens``), the teacher
samples of every question a trial may keep (read from the generation store: M of each, for the
largest M searched; generated only with ``tune.top_up``, else a store that lacks some is refused:
never a silently smaller M), verdicts (once per searched ``format.*`` / ``verify.*``), the mean probe length
that lowers a fixed M under a per-question token cap, the base student's score — then
Tune runs the trials (``tuning.trial``: curation → SFT inside the trial → evaluation), searched on a
grid or by Optuna, with ASHA stopping poor trials early on epochs. Each trial runs ``space.trial_job``
(one teacher: its ``teacher`` choice or the job's first), the job ``best_job.yaml`` holds for the best
one. Trials and the baseline are scored on the dev suite (``dev``) as the smoke test scores (the suite's
own sampling settings), never on the eval suites: those are what ``ray-distill run best_job.yaml``
reports, once, for the chosen budget (scoring them in every trial would cost an evaluation per rung
and invite choosing on them). Every trial is a nested MLflow run,
a failing one included (status FAILED, error logged); the search goes on. The result is the trial
table, the Pareto front of score vs corpus size, the best configuration written out as a job YAML,
and ``search/teacher_tokens_generated``, the teacher tokens the store reports having generated
during the search (0 when it already held every sample). ``tune.metric`` (``tune.mode``) ranks the
trials for Tune, ASHA and the best-trial choice; a trial ASHA stopped early is never "best" (its score
comes from fewer epochs), nor on the Pareto front.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd
import yaml

from ray_distill import columns as C
from ray_distill.config import ConfigError, JobConfig, TeacherConfig
from ray_distill.data.dev import probe_questions
from ray_distill.data.fs import absolute, join, write_text
from ray_distill.generation.hosts import actor_bundles, hosted, keep_engines, release_engines
from ray_distill.generation.store import GenerationStore
from ray_distill.progress import StageRunner
from ray_distill.tracking import MLflowTracker, Tracker, TrackerHandle
from ray_distill.tuning.pareto import pareto_front, plot_front
from ray_distill.tuning.space import (TEACHER, best_job_tree, candidate_questions, check_space, choices, max_epochs,
                                      needs_probe_length, param_space, trial_config, trial_teacher, variant_id,
                                      variants)
from ray_distill.tuning.trial import CORPUS_SHA256, EPOCHS, METRICS, RUN_ID, dev_metrics, score_dev, trial

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
    from ray_distill.runtime import init_ray

    check_space(cfg, METRICS)
    init_ray(cfg)
    raw = cfg  # best_job.yaml keeps the job's own engine settings (not the storage-cache paths they resolve to)
    # one engine host samples the base student for its pass rates and its dev-suite score (the model stays loaded),
    # and any hosted teacher or judge in between (swapped in); shut down before the trials need the cluster
    with keep_engines():
        cfg, base, inputs, counters = prepare(cfg, runner)
        tracker.log_metrics(counters)
        with runner.stage("evaluate_base") as (t, rec):
            scored = score_dev(cfg, base, inputs["dev"])  # as the trials and the smoke test score
            rec.student_tokens += int(scored["tokens"])
            baseline = dev_metrics(scored)
            t.log_metrics({f"before/{k}": v for k, v in baseline.items()})
            rec.notes["score"] = baseline["score"]
    work = join(absolute(cfg.run_dir), "tune")
    with runner.stage("search") as (t, rec):
        trials = run_tuner(cfg, base, inputs, t.handle(), work)
        rec.rows_out = len(trials)
        rec.notes["failed_trials"] = int((trials["status"] == "failed").sum())
    return summarise(raw, trials, tracker, counters, baseline, inputs["probe_lengths"])


def prepare(cfg: JobConfig, runner: StageRunner) -> tuple[JobConfig, str, dict, dict]:
    """What the driver prepares once for every trial: (the job with its models resolved, the base student,
    the trials' ``inputs``, the search counters). ``inputs`` (they travel through Ray's object store,
    ``tune.with_parameters``): the pool, the dev suite, the student's pass rates per rate variant, the
    graded teacher samples per teacher and verdict variant (``format.*``, ``verify.*``), and each
    teacher's mean probe length where a per-question token cap lowers a fixed M (as in the job)."""
    from ray_distill import pipeline as P
    from ray_distill.curation.driver import mean_tokens, verify
    from ray_distill.evaluation.stage import student_pass_rates

    cfg = P.resolve_models(cfg)
    raw_job = cfg.model_dump(mode="json")
    store = GenerationStore(join(cfg.storage, "generations"))
    base, pool, _, dev = P.student_and_questions(cfg, runner)
    rates = {}  # one pass-rate table per searched compression.k/temperature/max_tokens combination
    for v in variants(cfg, "rates"):
        with runner.stage("pass_rates" + "".join(f"/{k.rsplit('.', 1)[-1]}={x}" for k, x in v.items()),
                          rows_in=len(pool)) as (t, rec):
            rates[variant_id(v, list(v))] = table = student_pass_rates(trial_config(raw_job, v), pool, base, rec)
            rec.notes["mean_pass_rate"] = float(table[C.PASS_RATE].mean())
    candidates = candidate_questions(cfg, pool, rates)
    m_max = max(choices(cfg, "selection.samples_per_question"))
    names = {trial_teacher(cfg, {TEACHER: c} if c is not None else {})
             for c in cfg.tune.search_space.get(TEACHER, [None])}
    if TEACHER not in cfg.tune.search_space and len(cfg.teachers) > 1:
        logger.warning("no 'teacher' key in tune.search_space: every trial distils from the job's first teacher %r "
                       "and best_job.yaml pins it (no smoke test); search 'teacher' to compare the teachers",
                       cfg.teachers[0].name)
    graded: dict[str, dict[str, pd.DataFrame]] = {}  # teacher -> verdict variant id -> graded samples
    probe_lengths: dict[str, float | None] = {}
    counters = {"search/teacher_rows_generated": 0, "search/teacher_tokens_generated": 0}

    def spend(spent: dict, rec) -> None:
        counters["search/teacher_rows_generated"] += spent["generated"]
        counters["search/teacher_tokens_generated"] += spent["completion_tokens"]
        rec.teacher_tokens += spent["completion_tokens"]

    for teacher in (t for t in cfg.teachers if t.name in names):
        if cfg.tune.top_up and not hosted(teacher):  # it may generate in its own actors: as in a job, an idle
            # engine host stays only if they fit beside it
            release_engines(room_for=actor_bundles(teacher), what=f"teacher {teacher.name}'s actors")
        with runner.stage(f"samples/{teacher.name}", rows_in=len(candidates) * m_max) as (t, rec):
            samples, spent = teacher_samples(store, candidates, teacher, m_max, cfg.tune.top_up)
            spend(spent, rec)
            counters[f"search/store_coverage/{teacher.name}"] = len(samples) / max(1, len(candidates) * m_max)
            # verdicts per searched format.* / verify.* combination (the judge's engine resolved as in a job)
            graded[teacher.name] = {variant_id(v, list(v)): verify(P.resolve_models(trial_config(raw_job, v)),
                                                                  samples, base, t, rec)
                                    for v in variants(cfg, "verdicts")}
            if needs_probe_length(cfg):  # the job lowers a fixed M by the teacher's mean probe length
                probe = probe_questions(cfg, pool)
                held, spent = teacher_samples(store, probe, teacher, 1, cfg.tune.top_up,
                                              what="budget.max_teacher_tokens_per_question: the probe")
                spend(spent, rec)
                probe_lengths[teacher.name] = mean_tokens(held)
            rec.rows_out = len(samples)
    logger.info("teacher tokens generated for the search: %d", counters["search/teacher_tokens_generated"])
    inputs = {"pool": pool, "rates": rates, "graded": graded, "dev": dev, "probe_lengths": probe_lengths}
    return cfg, base, inputs, counters


def teacher_samples(store: GenerationStore, questions: list[dict], teacher: TeacherConfig, m: int,
                    top_up: bool, what: str = "") -> tuple[pd.DataFrame, dict[str, int]]:
    """(samples 0..m-1 of every question, the store's counters of this read: ``generated`` samples and
    their ``completion_tokens``). With ``top_up`` the store generates what it lacks; without, a store
    that lacks some is refused (a trial would silently curate from fewer than M samples); ``what`` names
    the setting that needs them (default: M)."""
    if not top_up:
        held = store.lookup(questions, teacher, m)
        want = len(questions) * m
        if len(held) < want:
            short = len(questions) - int((held.groupby(C.QUESTION_ID).size() >= m).sum())
            raise ConfigError(
                f"{what or f'selection.samples_per_question: M={m}'} needs {want} samples of teacher "
                f"{teacher.name!r} for the {len(questions)} questions this search may keep; the generation store "
                f"{store.root} holds {len(held)} ({short} questions short): set tune.top_up: true to generate them "
                "(counted in teacher tokens), search a smaller M, or run the job first")
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

        tune_cfg.scheduler = ASHAScheduler(time_attr=EPOCHS, max_t=max_epochs(cfg), grace_period=t.grace_period,
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
    row["max_epochs"] = planned = int((result.config or {}).get("train.epochs", cfg.train.epochs))  # its own budget
    row["status"] = "failed" if result.error else ("stopped_early" if row[EPOCHS] < planned else "finished")
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


def rank_trials(trials: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """The trials that can be "best", best first: finished ones only (a trial ASHA stopped early scored
    after fewer epochs than the others: not comparable), by ``metric`` (``mode``), ties to the smaller
    corpus. Empty when no trial finished."""
    done = trials[trials["status"] == "finished"].dropna(subset=[metric])
    sign = 1.0 if mode == "max" else -1.0
    objective = done.assign(_objective=sign * done[metric].astype(float))
    return objective.sort_values(["_objective", "corpus_rows"], ascending=[False, True], kind="stable")


def summarise(cfg: JobConfig, trials: pd.DataFrame, tracker: Tracker, counters: dict, baseline: dict,
              probe_lengths: dict[str, float | None] | None = None) -> SearchResult:
    """The best finished trial by ``tune.metric`` (:func:`rank_trials`), its job YAML (``space.best_job_tree``:
    the job that rebuilds its corpus), and the Pareto front of that metric vs corpus rows (finished trials)."""
    metric = cfg.tune.metric
    tracker.log_table(trials, "trials.json")
    status = trials["status"].value_counts()
    tracker.log_metrics({"search/trials": len(trials), "search/failed_trials": int(status.get("failed", 0)),
                         "search/stopped_early": int(status.get("stopped_early", 0))})
    ranked = rank_trials(trials, metric, cfg.tune.mode)
    if ranked.empty:
        if not int(status.get("stopped_early", 0)):
            first = trials["error"].iloc[0] if len(trials) else "no trials"
            raise RuntimeError(f"every trial failed; first error: {first}")
        raise RuntimeError(f"no trial finished its epochs ({int(status.get('stopped_early', 0))} stopped early by "
                           "ASHA, which are not ranked against finished ones): run more trials or tune.scheduler: none")
    best = ranked.iloc[0]
    best_config = {k: _py(best[k]) for k in cfg.tune.search_space}
    best_path = join(cfg.run_dir, "best_job.yaml")
    write_text(best_path, yaml.safe_dump(best_job_tree(cfg, best_config, probe_lengths), sort_keys=False))
    front = ranked.loc[pareto_front(ranked, score="_objective", cost="corpus_rows").index]
    tracker.log_table(front, "pareto_front.json")
    scored = trials[trials["status"] != "failed"].dropna(subset=[metric])
    tracker.log_figure(plot_front(scored, front, score=metric, cost="corpus_rows",
                                  baseline=baseline.get(metric)), "pareto_front.png")
    tracker.log_metrics({"best_score": float(best[metric]), "best_corpus_rows": float(best["corpus_rows"])})
    tracker.set_tags({"ray_distill.best_metric": metric, f"ray_distill.best_{CORPUS_SHA256}": str(best[CORPUS_SHA256])
                      if CORPUS_SHA256 in best else ""})
    if "://" not in best_path:
        tracker.log_artifact(best_path)
    return SearchResult(trials, best_config, float(best[metric]), best_path, front, counters, baseline)


def _py(v):
    return v.item() if hasattr(v, "item") else v
