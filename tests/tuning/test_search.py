"""The data-budget search for real at tiny size: Optuna + ASHA over Ray Tune, Ray Train SFT inside each
trial, vLLM evaluation, MLflow nested runs; one trial fails on purpose and the search goes on; the
store already holds every sample, so the search generates no teacher token."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from mlflow import MlflowClient

from ray_distill import pipeline as P

from ray_distill.config import ConfigError, config_from_dict, load_config
from ray_distill.data.corpus import corpus_hash
from ray_distill.data.fs import join
from ray_distill.data.sources import load_source
from ray_distill.generation.store import GenerationStore
from ray_distill.progress import StageRunner
from ray_distill.tracking import NullTracker, start_tracker
from ray_distill.tuning.search import run_search, teacher_samples

TEACHER = {"name": "concise", "engine": {"kind": "scripted", "persona": "concise"},
           "sampling": {"temperature": 0.8, "max_tokens": 64}}


def _job(storage, student: str, **tune) -> dict:
    return {
        "name": "tiny-tune", "storage": str(storage),
        "questions": {"synthetic": {"family": "arith", "num_questions": 24, "min_difficulty": 1, "max_difficulty": 2,
                                    "seed": 3}},
        "teachers": [TEACHER],
        "student": {"model": student},
        "compression": {"k": 1, "max_pass_rate": 0.5, "max_tokens": 8},
        "selection": {"samples_per_question": 2, "keep_per_question": 1},
        "train": {"num_workers": 1, "epochs": 2, "batch_size": 8, "max_seq_len": 64},
        "eval": {"k": 2, "temperature": 1.0, "max_tokens": 8, "suites": [
            {"name": "arith", "synthetic": {"family": "arith", "num_questions": 6, "max_difficulty": 2, "seed": 7}},
            {"name": "max", "domain": "ood", "synthetic": {"family": "max", "num_questions": 4, "seed": 8}}]},
        "dev": {"num_questions": 6, "seed": 1},  # carved out of the pool: trials are scored on it
        "tune": tune,
    }


def test_store_lookup_and_top_up(ray_local, tmp_path):
    cfg = config_from_dict(_job(tmp_path, "unused"))
    pool = load_source(cfg.questions)[0][:5]
    store = GenerationStore(join(cfg.storage, "generations"))
    teacher = cfg.teachers[0]
    store.get_or_generate(pool, teacher, n=1)
    held = store.lookup(pool, teacher, 2)
    assert len(held) == 5 and set(held["sample_index"]) == {0}
    # M=2 exceeds what the store holds: refused, never silently curated from fewer samples
    with pytest.raises(ConfigError, match=r"selection.samples_per_question: M=2 needs 10 samples .* holds 5 "
                                          r"\(5 questions short\): set tune.top_up: true"):
        teacher_samples(store, pool, teacher, 2, top_up=False)
    samples, spent = teacher_samples(store, pool, teacher, 1, top_up=False)  # what is stored: nothing spent
    assert len(samples) == 5 and spent == {"generated": 0, "completion_tokens": 0}
    samples, spent = teacher_samples(store, pool, teacher, 2, top_up=True)  # generates sample 1 only
    assert len(samples) == 10 and spent["generated"] == 5
    # the store's own count of the tokens it generated, not a figure set here
    assert spent["completion_tokens"] == int(samples.loc[samples["sample_index"] == 1, "num_tokens"].sum()) > 0
    assert teacher_samples(store, pool, teacher, 2, top_up=False)[1]["completion_tokens"] == 0


@pytest.mark.slow
def test_optuna_asha_search_records_a_failing_trial(ray_local, tiny_student_path, tmp_path):
    space = {"selection.keep_per_question": [1, 2], "compression.min_pass_rate": [0.0, 0.9]}
    # Two trials keep the test near 3 minutes on 2 CPUs (each rung of a trial restarts Ray Train and vLLM).
    points = [{"selection.keep_per_question": 1, "compression.min_pass_rate": 0.9},  # band 0.9..0.5: fails
              {"selection.keep_per_question": 2, "compression.min_pass_rate": 0.0}]
    cfg = config_from_dict(_job(tmp_path, tiny_student_path, search="optuna", scheduler="asha", num_samples=2,
                                grace_period=1, reduction_factor=2, search_space=space, points_to_evaluate=points))
    # The store already holds M=2 samples of every question: the search must not generate any.
    store = GenerationStore(join(cfg.storage, "generations"))
    store.get_or_generate(load_source(cfg.questions)[0], cfg.teachers[0], n=2)
    tracker = start_tracker(True, None, "tune-test", cfg.storage, run_name="search")

    result = run_search(cfg, tracker, StageRunner(tracker))
    tracker.end()

    trials = result.trials
    assert len(trials) == 2
    failed = trials[trials["status"] == "failed"]
    assert len(failed) == 1 and failed["compression.min_pass_rate"].iloc[0] == 0.9 and failed["error"].iloc[0]
    ok = trials[trials["status"] != "failed"]
    assert ok["epochs"].tolist() == [2] and ok["status"].tolist() == ["finished"]  # both rungs ran
    assert (ok["corpus_rows"] > 0).all() and (ok["corpus_tokens"] > 0).all()
    assert ok["score"].between(0, 1).all() and (ok["pass_at_k"] >= ok["score"]).all()
    assert (ok["score_ci_low"] <= ok["score"]).all() and (ok["score"] <= ok["score_ci_high"]).all()
    assert result.counters["search/teacher_tokens_generated"] == 0
    assert load_config(result.best_job_path).selection.keep_per_question in (1, 2)

    client = MlflowClient(tracker.tracking_uri)
    parent = client.get_run(tracker.run_id)
    assert parent.data.metrics["search/teacher_tokens_generated"] == 0
    assert parent.data.metrics["search/failed_trials"] == 1
    runs = client.search_runs([parent.info.experiment_id], max_results=200)
    nested = [r for r in runs if r.info.run_name.startswith("trial-")]
    assert len(nested) == 2 and all(r.info.status != "RUNNING" for r in nested)
    (bad,) = [r for r in nested if r.info.status == "FAILED"]
    assert "ValueError" in bad.data.tags["error"] and bad.data.params["compression.min_pass_rate"] == "0.9"
    for run in (r for r in nested if r.info.status == "FINISHED"):
        m = run.data.metrics
        assert {"corpus_rows", "corpus_tokens", "score", "pass_at_k", "mean_length", "epochs_reached"} <= set(m)
        assert m["dev_questions"] == 6 and not any(k.startswith(("arith/", "max/")) for k in m)  # no eval suite
        assert run.data.params["selection.keep_per_question"] in ("1", "2")
        history = client.get_metric_history(run.info.run_id, "score")
        assert [h.step for h in history] == list(range(1, int(m["epochs_reached"]) + 1))  # one score per rung
    assert isinstance(result.front, pd.DataFrame) and len(result.front) >= 1

    # best_job.yaml rebuilds exactly the corpus the best trial scored: the job's own stages (as run_job
    # calls them) up to the corpus, without training, give the same content hash
    (digest,) = ok["corpus_sha256"].tolist()
    assert len(digest) == 64
    job = P.resolve_models(load_config(result.best_job_path))
    t = NullTracker()
    base, pool, _, _ = P.student_and_questions(job, StageRunner(t))
    kept, _ = P.compress_questions(job, pool, base, t)
    teacher = P._with_n(job.teachers[0], P._fixed_samples(job, None))
    graded = P.verify(job, P.generate(store, kept, teacher, t), base)
    corpus = P.write_job_corpus(P.select(job, graded, base), str(tmp_path / "best"), t)
    written = [json.loads(line) for line in (tmp_path / "best" / "corpus.jsonl").read_text().splitlines()]
    assert corpus_hash(corpus) == corpus_hash(written) == digest


def test_the_best_trial_is_chosen_by_tune_metric(tmp_path):
    from ray_distill.tracking import NullTracker
    from ray_distill.tuning.search import summarise

    space = {"selection.keep_per_question": [1, 2, 3]}
    trials = pd.DataFrame({"trial_id": ["a", "b", "c"], "selection.keep_per_question": [1, 2, 3],
                           "score": [0.5, 0.3, 0.5], "pass_at_k": [0.6, 0.9, 0.6], "mean_length": [30.0, 20.0, 10.0],
                           "corpus_rows": [10, 20, 30], "epochs": [2, 2, 2], "status": ["finished"] * 3,
                           "error": [""] * 3})

    def best(**tune):
        cfg = config_from_dict(_job(tmp_path, "unused", search_space=space, **tune))
        result = summarise(cfg, trials, NullTracker(), {}, {})
        return result.best_config["selection.keep_per_question"], result.best_score, load_config(result.best_job_path)

    assert best()[:2] == (1, 0.5)  # score (ties: the smaller corpus)
    k, value, job = best(metric="pass_at_k")
    assert (k, value, job.selection.keep_per_question) == (2, 0.9, 2)  # best_job.yaml follows the metric
    assert best(metric="mean_length", mode="min")[:2] == (3, 10.0)
