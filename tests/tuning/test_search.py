"""The data-budget search for real at tiny size: Optuna + ASHA over Ray Tune, Ray Train SFT inside each
trial, vLLM evaluation, MLflow nested runs; one trial fails on purpose and the search goes on; the
store already holds every sample, so the search generates no teacher token."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from ray_distill import pipeline as P

from ray_distill.config import ConfigError, config_from_dict, load_config
from ray_distill.data.corpus import corpus_hash
from ray_distill.data.fs import join
from ray_distill.data.sources import load_source
from ray_distill.generation.hosts import POOL
from ray_distill.generation.store import GenerationStore
from ray_distill.progress import StageRunner
from ray_distill.tracking import NullTracker, start_tracker
from ray_distill.tuning.search import run_search, teacher_samples

TEACHER = {"name": "concise", "engine": {"kind": "scripted", "persona": "concise"},
           "sampling": {"temperature": 0.8, "max_tokens": 64}}
# Two teachers and no 'teacher' key: every trial distils from the first, and so must its best job.
OTHER = {"name": "verbose", "engine": {"kind": "scripted", "persona": "verbose"},
         "sampling": {"temperature": 0.8, "max_tokens": 64}}


def _job(storage, student: str, **tune) -> dict:
    return {
        "name": "tiny-tune", "storage": str(storage),
        "questions": {"synthetic": {"family": "arith", "num_questions": 24, "min_difficulty": 1, "max_difficulty": 2,
                                    "seed": 3}},
        "teachers": [TEACHER, OTHER],
        "student": {"model": student},
        "compression": {"k": 1, "max_pass_rate": 0.5, "max_tokens": 8},
        "selection": {"samples_per_question": 2, "keep_per_question": 1},
        "train": {"num_workers": 1, "epochs": 2, "batch_size": 8, "max_seq_len": 64},
        "eval": {"k": 2, "temperature": 1.0, "max_tokens": 8, "suites": [
            {"name": "arith", "synthetic": {"family": "arith", "num_questions": 6, "max_difficulty": 2, "seed": 7}},
            {"name": "max", "domain": "ood", "synthetic": {"family": "max", "num_questions": 4, "seed": 8}}]},
        # trials, the baseline and the smoke test score the dev suite with its own k (not eval.k)
        "dev": {"suite": {"name": "dev", "k": 1, "synthetic": {"family": "arith", "num_questions": 6,
                                                              "max_difficulty": 2, "seed": 1}}},
        "tune": tune,
    }


@pytest.fixture(scope="module")
def stored(tmp_path_factory, ray_local):
    """A storage root whose generation store holds 3 samples of every question from the first teacher (the
    search's), none from the other; and the first teacher's mean sample length (a per-question cap of 1.5x
    that pays for one sample)."""
    storage = tmp_path_factory.mktemp("tune-store")
    cfg = config_from_dict(_job(storage, "unused"))
    samples, _ = GenerationStore(join(cfg.storage, "generations")).get_or_generate(
        load_source(cfg.questions)[0], cfg.teachers[0], n=3)
    return storage, float(samples.loc[samples["sample_index"] == 0, "num_tokens"].mean())


def _engine_hosts() -> set[str]:
    """Ids of every engine host actor this Ray cluster has started, dead ones included (Ray's actor table)."""
    from ray._private.state import actors

    return {actor_id for actor_id, a in actors().items() if a["ActorClassName"] == "EngineHost"}


def _rebuilt_hash(best_job) -> str:
    """The corpus hash of the best job run by its own path up to the corpus (`ray-distill curate`)."""
    built = P.run_job(best_job, NullTracker(), until="corpus")
    written = [json.loads(line) for line in (Path(built.corpus_dir) / "corpus.jsonl").read_text().splitlines()]
    return corpus_hash(written)


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
def test_optuna_asha_search_records_a_failing_trial(stored, tiny_student_path):
    storage, length = stored
    space = {"selection.keep_per_question": [1, 2], "compression.min_pass_rate": [0.0, 0.9]}
    # Two trials keep the test near 3 minutes on 2 CPUs (each rung of a trial restarts Ray Train and vLLM).
    points = [{"selection.keep_per_question": 1, "compression.min_pass_rate": 0.9},  # band 0.9..0.5: fails
              {"selection.keep_per_question": 2, "compression.min_pass_rate": 0.0}]
    # half a CPU each for the trial's own process, its engine host and its training worker: on the 2-CPU test cluster
    # the idle host leaves a CPU free beside the trial (the tokenization's) and the rung's Ray Train launch fits beside
    # it, so the host serves both rungs' students
    job = _job(storage, tiny_student_path, search="optuna", scheduler="asha", num_samples=2,
               grace_period=1, reduction_factor=2, search_space=space, points_to_evaluate=points,
               trial_resources={"CPU": 0.5})
    job["train"]["cpus_per_worker"] = 0.5
    job["student"]["serving"] = {"resources": {"num_cpus": 0.5}}
    # a per-question cap that pays for one of M=2 samples: the job lowers M to 1, so must every trial
    cfg = config_from_dict({**job, "budget": {"max_teacher_tokens_per_question": int(1.5 * length)}})
    # The store already holds M=2 samples of every question: the search must not generate any.
    tracker = start_tracker(True, None, "tune-test", cfg.storage, run_name="search")

    loads, hosts = POOL.engine_loads["student"], _engine_hosts()
    result = run_search(cfg, tracker, StageRunner(tracker))
    tracker.end()
    # the driver built the base student's engine once: one host sampled its pass rates and its dev-suite score
    assert POOL.engine_loads["student"] - loads == 1
    # one engine host in the driver, one in the trial that trained (both rungs' students: the second swapped in)
    assert len(_engine_hosts() - hosts) == 2

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
    assert result.baseline["dev_k"] == 1  # the base student is scored as the trials and the smoke test score
    assert load_config(result.best_job_path).selection.keep_per_question in (1, 2)

    client = MlflowClient(tracker.tracking_uri)
    parent = client.get_run(tracker.run_id)
    assert parent.data.metrics["search/teacher_tokens_generated"] == 0
    assert parent.data.metrics["search/failed_trials"] == 1
    runs = client.search_runs([parent.info.experiment_id], max_results=200)
    # the base student's samples count where they are used: compression's pass rates, the baseline on the dev suite
    stages = {r.info.run_name: r.data.metrics for r in runs
              if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert stages["pass_rates"]["student_tokens"] > 0 and stages["evaluate_base"]["student_tokens"] > 0
    nested = [r for r in runs if r.info.run_name.startswith("trial-")]
    assert len(nested) == 2 and all(r.info.status != "RUNNING" for r in nested)
    (bad,) = [r for r in nested if r.info.status == "FAILED"]
    assert "ValueError" in bad.data.tags["error"] and bad.data.params["compression.min_pass_rate"] == "0.9"
    for run in (r for r in nested if r.info.status == "FINISHED"):
        m = run.data.metrics
        assert {"corpus_rows", "corpus_tokens", "score", "pass_at_k", "mean_length", "epochs_reached"} <= set(m)
        assert m["dev_questions"] == 6 and not any(k.startswith(("arith/", "max/")) for k in m)  # no eval suite
        assert m["dev_k"] == 1  # the dev suite's own k, as the smoke test samples it (eval.k is 2)
        assert run.data.params["selection.keep_per_question"] in ("1", "2")
        history = client.get_metric_history(run.info.run_id, "score")
        assert [h.step for h in history] == list(range(1, int(m["epochs_reached"]) + 1))  # one score per rung
    assert isinstance(result.front, pd.DataFrame) and len(result.front) >= 1

    # best_job.yaml rebuilds exactly the corpus the best trial trained on: the trial's teacher pinned (the
    # search ran no smoke test), M as the cap lowered it; the job's own path (`ray-distill curate`), same hash
    (digest,) = ok["corpus_sha256"].tolist()
    assert len(digest) == 64
    best = load_config(result.best_job_path)
    assert [t.name for t in best.teachers] == ["concise"] and not best.smoke_test.enabled
    assert best.selection.samples_per_question == 1
    assert _rebuilt_hash(best) == digest


@pytest.mark.slow
def test_the_best_job_rebuilds_an_adaptive_trials_corpus(stored, tiny_student_path):
    """Adaptive sampling under a per-question cap: the trial replays the rounds on the stored samples, the
    best job samples them live (from the same store) and must keep the same rows."""
    from ray_distill.curation.adapters import load_tokenize
    from ray_distill.tuning.search import prepare
    from ray_distill.tuning.space import best_job_tree
    from ray_distill.tuning.trial import trial_corpus

    storage, length = stored
    job = {**_job(storage, tiny_student_path, search_space={"selection.keep_per_question": [1]}),
           "name": "tiny-adaptive", "budget": {"max_teacher_tokens_per_question": int(2.5 * length)},
           "selection": {"samples_per_question": 3, "keep_per_question": 1, "adaptive": {"enabled": True}}}
    cfg = config_from_dict(job)
    resolved, base, inputs, counters = prepare(cfg, StageRunner(NullTracker()))
    params = {"selection.keep_per_question": 1}
    _, selected, figures = trial_corpus(resolved.model_dump(mode="json"), params, inputs, load_tokenize(base))
    assert counters["search/teacher_tokens_generated"] == 0 and len(selected) > 0
    assert any(k.startswith("adaptive_") for k in figures)  # the trial replayed the rounds (stop reasons counted)
    best = config_from_dict(best_job_tree(cfg, params, inputs["probe_lengths"]))
    assert [t.name for t in best.teachers] == ["concise"] and best.selection.adaptive.enabled
    assert _rebuilt_hash(best) == figures["corpus_sha256"]


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


def test_a_trial_asha_stopped_early_is_never_the_best(tmp_path):
    from ray_distill.tracking import NullTracker
    from ray_distill.tuning.search import summarise

    # trial a scored best after 1 of 4 epochs and was stopped; b and c finished: b is the best
    space = {"selection.keep_per_question": [1, 2, 3]}
    trials = pd.DataFrame({"trial_id": ["a", "b", "c"], "selection.keep_per_question": [1, 2, 3],
                           "score": [0.9, 0.4, 0.3], "corpus_rows": [10, 20, 30], "epochs": [1, 4, 4],
                           "status": ["stopped_early", "finished", "finished"], "error": [""] * 3,
                           "corpus_sha256": ["ha", "hb", "hc"]})
    cfg = config_from_dict(_job(tmp_path, "unused", search_space=space))
    result = summarise(cfg, trials, NullTracker(), {}, {})
    assert result.best_config == {"selection.keep_per_question": 2} and result.best_score == 0.4
    assert load_config(result.best_job_path).selection.keep_per_question == 2
    assert result.front["trial_id"].tolist() == ["b"]  # the front compares finished trials only
    from ray_distill.tuning.search import rank_trials

    assert rank_trials(trials, "score", "max")["trial_id"].tolist() == ["b", "c"]
    with pytest.raises(RuntimeError, match="no trial finished its epochs .1 stopped early by ASHA"):
        summarise(cfg, trials.iloc[:1], NullTracker(), {}, {})
