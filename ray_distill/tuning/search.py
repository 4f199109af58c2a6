"""Data-budget search with Ray Tune on stored generations.

    ray-distill tune jobs/quickstart_tune.yaml

The driver prepares everything that does not depend on the budget once — base student, questions,
student pass rates, teacher generations (from the store: nothing is regenerated), verdicts — then
every trial is curation (compress → cap questions → select P) → SFT (Ray Train inside the trial)
→ evaluation (vLLM), logged as a nested MLflow run. The result is the trial table, the Pareto front
of score vs corpus size, and the best configuration written out as a job YAML.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import pandas as pd
import yaml

from ray_distill import columns as C
from ray_distill.config import JobConfig, apply_override, config_from_dict
from ray_distill.data.fs import absolute, join, write_text
from ray_distill.progress import StageRunner
from ray_distill.tracking import Tracker, TrackerHandle
from ray_distill.tuning.pareto import pareto_front, plot_front

logger = logging.getLogger(__name__)


@dataclass
class SearchResult:
    trials: pd.DataFrame
    best_config: dict
    best_score: float
    best_job_path: str
    front: pd.DataFrame


def run_search(cfg: JobConfig, tracker: Tracker, runner: StageRunner) -> SearchResult:
    from ray_distill import pipeline as P
    from ray_distill.generation.store import GenerationStore
    from ray_distill.runtime import init_ray
    from ray_distill.students import prepare_student

    init_ray(cfg)
    store = GenerationStore(join(cfg.storage, "generations"))
    space = cfg.tune.search_space
    teachers = [t for t in cfg.teachers if t.name in space.get("teacher", [cfg.teachers[0].name])]
    m_max = max([cfg.selection.samples_per_question, *space.get("selection.samples_per_question", [])])

    with runner.stage("student") as (t, rec):
        base = prepare_student(cfg, t)
    with runner.stage("questions") as (t, rec):
        pool, suites = P.load_questions(cfg, t)
        rec.rows_out = len(pool)
    with runner.stage("pass_rates", rows_in=len(pool)) as (t, rec):
        rates = P.student_pass_rates(cfg, pool, base)
        rec.notes["mean_pass_rate"] = float(rates[C.PASS_RATE].mean())
    graded = {}
    for teacher in teachers:
        with runner.stage(f"generate/{teacher.name}", rows_in=len(pool)) as (t, rec):
            gen = P.generate(store, pool, P._with_n(teacher, m_max), t)
            graded[teacher.name] = P.verify(cfg, gen, base)
            rec.rows_out = len(graded[teacher.name])
    work = join(absolute(cfg.run_dir), "tune")
    inputs = save_inputs(work, pool, rates, graded, suites)
    with runner.stage("search") as (t, rec):
        trials = run_tuner(cfg, base, inputs, t.handle(), work)
        rec.rows_out = len(trials)
    return summarise(cfg, trials, tracker, work)


def save_inputs(work: str, pool, rates, graded, suites) -> dict[str, str]:
    os.makedirs(work, exist_ok=True)
    paths = {"pool": f"{work}/pool.parquet", "rates": f"{work}/pass_rates.parquet", "suites": f"{work}/suites.yaml"}
    pd.DataFrame(pool).to_parquet(paths["pool"])
    rates.to_parquet(paths["rates"])
    for name, df in graded.items():
        paths[f"graded/{name}"] = f"{work}/graded-{name}.parquet"
        df.to_parquet(paths[f"graded/{name}"])
    with open(paths["suites"], "w") as f:
        yaml.safe_dump(suites, f)
    return paths


def run_tuner(cfg: JobConfig, base: str, inputs: dict, handle: TrackerHandle | None, work: str) -> pd.DataFrame:
    from ray import tune

    space = {k: tune.grid_search(v) for k, v in cfg.tune.search_space.items()} if cfg.tune.search == "grid" else \
        {k: tune.choice(v) for k, v in cfg.tune.search_space.items()}
    tune_cfg = tune.TuneConfig(metric=cfg.tune.metric, mode="max", max_concurrent_trials=cfg.tune.max_concurrent_trials,
                               num_samples=cfg.tune.num_samples if cfg.tune.search == "optuna" else 1)
    if cfg.tune.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        tune_cfg.search_alg = OptunaSearch(seed=cfg.seed)
    trainable = tune.with_parameters(trial, job=cfg.model_dump(mode="json"), base=base, inputs=inputs, handle=handle)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"CPU": 1}),
        param_space=space,
        tune_config=tune_cfg,
        run_config=tune.RunConfig(name="search", storage_path=work, failure_config=tune.FailureConfig(max_failures=0),
                                  verbose=1),
    )
    grid = tuner.fit()
    rows = []
    for r in grid:
        row = {k: r.config.get(k) for k in cfg.tune.search_space}
        row.update({k: r.metrics.get(k) for k in ("score", "ood_score", "corpus_rows", "corpus_questions", "corpus_tokens")})
        row["error"] = str(r.error).splitlines()[0] if r.error else ""
        rows.append(row)
    return pd.DataFrame(rows)


def trial(config: dict, job: dict, base: str, inputs: dict, handle: TrackerHandle | None) -> dict:
    """One data budget: curate from stored verdicts → SFT → evaluate; reports score and corpus size."""
    from ray import tune

    from ray_distill import pipeline as P
    from ray_distill.curation.compression import compress
    from ray_distill.curation.selection import select_diverse
    from ray_distill.data.corpus import to_chat_row
    from ray_distill.tracking import MLflowTracker, NullTracker
    from ray_distill.training.sft import train_sft
    from transformers import AutoTokenizer

    tree = dict(job)
    for key, value in config.items():
        if key != "teacher":
            apply_override(tree, key.split("."), value)
    cfg = config_from_dict(tree, source="tune trial")
    teacher = config.get("teacher", cfg.teachers[0].name)
    name = "trial-" + "-".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in config.items())
    tracker = (MLflowTracker.create(handle.tracking_uri, cfg.tracking.experiment, name, {"ray_distill.trial": name},
                                    parent_run_id=handle.run_id) if handle else NullTracker())
    try:
        pool = pd.read_parquet(inputs["pool"]).to_dict("records")
        rates = pd.read_parquet(inputs["rates"])
        graded = pd.read_parquet(inputs[f"graded/{teacher}"])
        with open(inputs["suites"]) as f:
            suites = yaml.safe_load(f)
        c = cfg.compression
        kept = compress(pool, rates, c.max_pass_rate, c.min_pass_rate, c.replay_fraction, seed=cfg.seed)[0] \
            if c.enabled else pool
        kept = kept[: cfg.selection.max_questions] if cfg.selection.max_questions else kept
        ids = {q[C.QUESTION_ID] for q in kept}
        m = cfg.selection.samples_per_question
        pick = graded[graded[C.QUESTION_ID].isin(ids) & (graded[C.SAMPLE_INDEX] < m) & P._ok(graded)]
        tok = AutoTokenizer.from_pretrained(base)
        tokenize = lambda text: tok(text)["input_ids"]  # noqa: E731
        parts = [select_diverse(g, cfg.selection.keep_per_question, cfg.selection.seed, tokenize)
                 for _, g in pick.groupby(C.QUESTION_ID, sort=True)]
        selected = pd.concat(parts) if parts else pick.head(0)
        corpus = [to_chat_row(r) for r in selected.to_dict("records")]
        tokens = int(sum(len(tokenize(r[C.COMPLETION])) for r in selected.to_dict("records")))
        tracker.log_params({**config, "teacher": teacher})
        tracker.log_metrics({"corpus_rows": len(corpus), "corpus_questions": len(ids), "corpus_tokens": tokens})
        result = train_sft(corpus, base, join(cfg.run_dir, "tune", "students", name), cfg.train,
                           storage_path=join(absolute(cfg.run_dir), "ray_train"), run_name=name,
                           tracker_handle=tracker.handle())
        scores = P.evaluate(cfg, result.model_path, suites, tracker, prefix="after")
        ood = [s.name for s in cfg.eval.suites if s.domain == "ood"]
        metrics = {"score": P.in_domain_score(cfg, scores),
                   "ood_score": P._mean_score({n: scores[n] for n in ood}) if ood else float("nan"),
                   "corpus_rows": len(corpus), "corpus_questions": int(selected[C.QUESTION_ID].nunique()) if len(selected) else 0,
                   "corpus_tokens": tokens}
        tracker.log_metrics(metrics)
        tracker.end()
    except BaseException:
        tracker.end("FAILED")
        raise
    tune.report(metrics)
    return metrics


def summarise(cfg: JobConfig, trials: pd.DataFrame, tracker: Tracker, work: str) -> SearchResult:
    ok = trials[trials["error"] == ""].dropna(subset=["score"])
    if ok.empty:
        raise RuntimeError(f"every trial failed; first error: {trials['error'].iloc[0] if len(trials) else 'no trials'}")
    best = ok.sort_values(["score", "corpus_rows"], ascending=[False, True]).iloc[0]
    best_config = {k: _py(best[k]) for k in cfg.tune.search_space}
    tree = cfg.model_dump(mode="json")
    for key, value in best_config.items():
        if key != "teacher":
            apply_override(tree, key.split("."), value)
    if "teacher" in best_config:
        tree["teachers"] = [t for t in tree["teachers"] if t["name"] == best_config["teacher"]]
        tree["smoke_test"]["enabled"] = False
    tree.pop("tune", None)
    best_path = join(cfg.run_dir, "best_job.yaml")
    write_text(best_path, yaml.safe_dump(tree, sort_keys=False))
    front = pareto_front(ok, score="score", cost="corpus_rows")
    tracker.log_table(trials, "trials.json")
    tracker.log_table(front, "pareto_front.json")
    tracker.log_figure(plot_front(ok, front, score="score", cost="corpus_rows"), "pareto_front.png")
    tracker.log_metrics({"best_score": float(best["score"]), "best_corpus_rows": float(best["corpus_rows"])})
    if "://" not in best_path:
        tracker.log_artifact(best_path)
    return SearchResult(trials, best_config, float(best["score"]), best_path, front)


def _py(v):
    return v.item() if hasattr(v, "item") else v
