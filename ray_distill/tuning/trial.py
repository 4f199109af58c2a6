"""One trial of the data-budget search: curation on stored verdicts → SFT (Ray Train inside the
trial) → evaluation on the dev suite (vLLM), reported to Tune after every rung of epochs so ASHA can
stop it early.

- :func:`curate`: pure; the job's corpus from stored samples: compress → cap questions → the first M
  samples (or the job's adaptive rounds replayed) → farthest-P, plus the corpus figures and hash.
- :func:`trial_corpus`: the trial's job (``space.trial_job``: what its ``best_job.yaml`` holds) and its
  corpus from the driver's inputs.
- :func:`trial`: the Tune function trainable. Each rung resumes the same Ray Train run (same
  ``(storage_path, run_name)``, see ``training.sft``) for more epochs, evaluates (trials that run one at a
  time keep their engine host from rung to rung, ``generation.hosts``), and calls ``tune.report``; a
  stopped trial simply gets no further rung. The trial's nested MLflow run gets its params, corpus
  figures and scores per rung (step = epochs); a failing trial marks its run FAILED with the error and
  re-raises, so Tune records it and the search goes on.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import Callable

import pandas as pd

from ray_distill import columns as C
from ray_distill.config import JobConfig
from ray_distill.curation.compression import compress
from ray_distill.curation.adapters import load_tokenize
from ray_distill.curation import adaptive as A
from ray_distill.curation.selection import distance_report, distance_table, select_questions
from ray_distill.data.corpus import corpus_hash, to_chat_row
from ray_distill.data.dev import capped_questions
from ray_distill.data.fs import absolute, join
from ray_distill.generation.hosts import keep_engines
from ray_distill.tracking import MLflowTracker, NullTracker, Tracker, TrackerHandle
from ray_distill.tuning.space import group_keys, rungs, trial_job, trial_name, variant_id

logger = logging.getLogger(__name__)

RUN_ID = "mlflow_run_id"  # reported to Tune so the driver can close the run of a trial ASHA stopped
EPOCHS = "epochs"  # ASHA's time attribute
CORPUS_SHA256 = "corpus_sha256"  # content hash of the trial's corpus (``data.corpus.corpus_hash``)
# What a trial reports after every rung (``tune.metric`` must be one of the numbers)
METRICS = ("score", "score_ci_low", "score_ci_high", "pass_at_k", "mean_length", "dev_questions", "dev_k", "train_loss",
           "kept_questions", "candidate_samples", "corpus_rows", "corpus_questions", "corpus_tokens",
           "mean_distance_selected", "mean_distance_all_correct", "questions_with_choice", "student_tokens", "wall_s")


def curate(cfg: JobConfig, pool: list[dict], rates: pd.DataFrame, graded: pd.DataFrame,
           tokenize: Callable[[str], list[int]]) -> tuple[pd.DataFrame, dict]:
    """The trial's corpus rows from graded teacher samples, and its figures: the corpus the job
    ``cfg`` builds from the same samples (``ray-distill run best_job.yaml`` rebuilds it, same
    ``corpus_sha256``).

    As in the job: questions are kept by the pass-rate band (in pool order), ``selection.max_questions`` of them
    (a seeded sample, ``data.dev.capped_questions``) are sampled (a question without a verified-correct sample
    then adds nothing); each gets its first M samples (``selection.samples_per_question``), or the
    samples the job's adaptive rounds would draw (``selection.adaptive``, replayed on the stored
    ones); per question the P farthest-apart correct trajectories stay."""
    c, s = cfg.compression, cfg.selection
    kept = compress(pool, rates, c.max_pass_rate, c.min_pass_rate, c.replay_fraction, seed=cfg.seed)[0] \
        if c.enabled else pool
    sampled = [str(q[C.QUESTION_ID]) for q in capped_questions(cfg, kept)]
    qid = graded[C.QUESTION_ID].astype(str)
    candidates = graded[qid.isin(set(sampled)) & (graded[C.SAMPLE_INDEX] < s.samples_per_question)]
    stops: dict[str, str] = {}
    if s.adaptive.enabled:
        candidates, stops = A.replay(candidates, sampled, A.plan_from_config(cfg))
    selected = select_questions(candidates, s.keep_per_question, s.seed, tokenize)
    rows = [to_chat_row(r) for r in selected.to_dict("records")]
    figures = {
        "kept_questions": len(kept),
        "candidate_samples": len(candidates),
        "corpus_rows": len(selected),
        "corpus_questions": int(selected[C.QUESTION_ID].nunique()) if len(selected) else 0,
        "corpus_tokens": int(sum(len(tokenize(t)) for t in selected[C.COMPLETION])),
        **distance_report(selected),  # mean distance kept vs all distinct correct, per question
        **{f"adaptive_{k}": int(v) for k, v in pd.Series(stops, dtype=object).value_counts().items()},
        CORPUS_SHA256: corpus_hash(rows),
    }
    return selected, figures


def dev_metrics(m: dict) -> dict[str, float]:
    """Tune metrics of one evaluation on the dev suite (``avg_at_k`` figures of that one suite): ``score``
    (avg@k, the default objective) with its 95% CI (``score_ci_low``/``score_ci_high``), ``pass_at_k``,
    ``mean_length``, ``dev_questions`` and ``dev_k`` (the suite's own k when it sets one, as in the smoke
    test). The eval suites are not scored in trials: they are what the best configuration's job reports
    (selection on them would be selection on the test set)."""
    return {"score": float(m["avg_at_k"]), "score_ci_low": float(m["ci_low"]), "score_ci_high": float(m["ci_high"]),
            "pass_at_k": float(m["pass_at_k"]), "mean_length": float(m["mean_length"]),
            "dev_questions": int(m["n_questions"]), "dev_k": int(m["k"])}


def score_dev(cfg: JobConfig, model: str, dev: dict[str, list[dict]]) -> dict:
    """``model``'s avg@k figures on the dev suite, sampled and graded exactly as the job's smoke test
    scores its students (``evaluation.stage.score_model``: the suite's own k / temperature / max_tokens / pass_k and
    grading settings, student samples kept in the job's store by checkpoint digest)."""
    from ray_distill.evaluation.stage import score_model

    (m,) = score_model(cfg, model, dev)[0].values()
    return m


def trial_corpus(job: dict, params: dict, inputs: dict, tokenize: Callable[[str], list[int]]
                 ) -> tuple[JobConfig, pd.DataFrame, dict]:
    """(the trial's job, its corpus rows, their figures) from the driver's ``inputs`` (pool, pass rates per
    rate variant, graded samples per teacher and verdict variant, probe lengths): :func:`curate` under
    ``space.trial_job``, the job ``best_job.yaml`` writes out."""
    cfg = trial_job(job, params, inputs.get("probe_lengths"))
    rates = inputs["rates"][variant_id(params, group_keys(cfg, "rates"))]  # this trial's compression.k, ...
    verdicts = variant_id(params, group_keys(cfg, "verdicts"))  # this trial's format.*, verify.*
    graded = inputs["graded"][cfg.teachers[0].name][verdicts]
    selected, figures = curate(cfg, inputs["pool"], rates, graded, tokenize)
    return cfg, selected, figures


def trial(params: dict, job: dict, base: str, inputs: dict, handle: TrackerHandle | None) -> None:
    """Tune function trainable (see the module docstring); ``inputs``: the pool, pass rates, graded samples
    per teacher and the dev suite, put in the object store once by ``tune.with_parameters``."""
    from ray import tune

    name = trial_name(params, tune.get_context().get_trial_id())
    tracker = nested_run(handle, name) if handle else NullTracker()
    try:
        tracker.log_params(params)
        for epochs, metrics in run_rungs(job, params, base, inputs, name, tracker):
            tracker.log_metrics({k: v for k, v in metrics.items() if k != CORPUS_SHA256}, step=epochs)
            tune.report({**metrics, RUN_ID: tracker.run_id or ""})
    except Exception as err:
        tracker.set_tags({"error": f"{type(err).__name__}: {str(err).strip()[:400]}"})
        tracker.log_dict({"error": str(err), "traceback": traceback.format_exc()}, "error.json")
        tracker.end("FAILED")
        raise
    tracker.end()


def nested_run(parent: TrackerHandle, name: str) -> MLflowTracker:
    """A run nested under ``parent``, in the parent's experiment. Not ``Tracker.child``: a trial that
    Tune ends after its last report never leaves a context manager (the driver closes its run)."""
    p = MLflowTracker(parent.tracking_uri, parent.run_id)
    experiment = p.client.get_experiment(p.experiment_id).name
    return MLflowTracker.create(parent.tracking_uri, experiment, name, {"ray_distill.trial": name},
                                parent_run_id=parent.run_id)


def run_rungs(job: dict, params: dict, base: str, inputs: dict, name: str, tracker: Tracker):
    """Curate once (:func:`trial_corpus`), then per rung: train up to that many epochs (resuming, on the
    job's learning-rate schedule), evaluate on the dev suite; yields ``(epochs, metrics)``."""
    from ray_distill.training.replay import training_rows
    from ray_distill.training.sft import train_sft

    cfg, selected, figures = trial_corpus(job, params, inputs, load_tokenize(base))
    digest = figures.pop(CORPUS_SHA256)
    tracker.log_params({"teachers": cfg.teachers[0].name,
                        "effective.selection.samples_per_question": cfg.selection.samples_per_question})
    tracker.set_tags({f"ray_distill.{CORPUS_SHA256}": digest})
    tracker.log_metrics(figures)
    job_tree = cfg.model_dump(mode="json")
    job_tree.pop("tune", None)
    tracker.log_dict(job_tree, "trial_job.json")  # the job that rebuilds this corpus (best_job.yaml for the best)
    tracker.log_table(distance_table(selected), "selection_distances.json")  # kept vs available, per question
    if selected.empty:
        raise ValueError(f"trial {name}: the curated corpus is empty ({figures})")
    corpus = [to_chat_row(r) for r in selected.sort_values([C.QUESTION_ID, C.SAMPLE_INDEX]).to_dict("records")]
    rows, _ = training_rows(cfg, corpus)  # the corpus (whose hash the trial reports) plus any replay, as in a job
    t = cfg.tune
    schedule = [cfg.train.epochs] if t.scheduler == "none" else rungs(cfg.train.epochs, t.grace_period,
                                                                      t.reduction_factor)
    start, student_tokens = time.perf_counter(), 0
    # A trial that runs alone keeps its engine host from rung to rung: each rung's student is swapped in where the
    # rung's Ray Train launch fits beside the idle host (generation.hosts); concurrent trials release theirs, which
    # could hold the resources another trial's launch waits for.
    with keep_engines() if t.max_concurrent_trials == 1 else contextlib.nullcontext():
        for epochs in schedule:  # cfg.train.schedule_epochs is pinned (trial_job): every rung continues one schedule
            result = train_sft(rows, base, join(cfg.run_dir, "tune", "students", name),
                               cfg.train.model_copy(update={"epochs": epochs}),
                               storage_path=join(absolute(cfg.run_dir), "ray_train"), run_name=name,
                               tracker_handle=tracker.handle(), log_model=False,
                               chat_template=cfg.student.chat_template)
            m = score_dev(cfg, result.model_path, inputs["dev"])
            student_tokens += int(m["tokens"])
            # a trial curates the samples the driver read (its teacher tokens: search/teacher_tokens_generated)
            yield epochs, {**figures, **dev_metrics(m), EPOCHS: epochs, CORPUS_SHA256: digest,
                           "train_loss": float(result.metrics.get("train_loss", float("nan"))),
                           "student_tokens": student_tokens, "wall_s": time.perf_counter() - start}
