"""The search space, rungs, teacher mixes, trial configs and per-trial curation (pure, no Ray)."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from ray_distill import columns as C
from ray_distill.config import ConfigError, JobConfig, config_from_dict
from ray_distill.tuning.space import (best_job_tree, candidate_questions, check_space, group_keys, rungs,
                                      teacher_names, trial_config, trial_name, variant_id, variants)
from ray_distill.data.corpus import corpus_hash, to_chat_row
from ray_distill.tuning.search import trial_row
from ray_distill.tuning.trial import METRICS, curate, dev_metrics

TEACHERS = [{"name": n, "engine": {"kind": "scripted", "persona": n}} for n in ("concise", "verbose")]


def _job(extra: dict | None = None, **tune) -> JobConfig:
    return config_from_dict({"questions": {"synthetic": {"num_questions": 5}}, "teachers": TEACHERS,
                             "dev": {"suite": {"name": "d", "synthetic": {"num_questions": 3, "seed": 9}}},
                             "eval": {"suites": [{"name": "a", "synthetic": {"num_questions": 3}},
                                                 {"name": "b", "domain": "ood", "synthetic": {"num_questions": 3}}]},
                             "tune": tune, **(extra or {})})


def test_rungs_follow_asha_milestones():
    assert rungs(8, 1, 2) == [1, 2, 4, 8]
    assert rungs(10, 1, 3) == [1, 3, 9, 10]
    assert rungs(5, 2, 2) == [2, 4, 5]
    assert rungs(3, 4, 2) == [3]  # grace period beyond the budget: one rung at max_epochs


def test_teacher_names_and_mixes():
    assert teacher_names(None, ["concise", "verbose"]) == ["concise"]
    assert teacher_names("concise+verbose", ["concise", "verbose"]) == ["concise", "verbose"]
    with pytest.raises(ConfigError, match="'sloppy' must name job teachers"):
        teacher_names("sloppy", ["concise", "verbose"])
    with pytest.raises(ConfigError, match="search_space.teacher"):
        check_space(_job(search_space={"teacher": ["concise", "concise+nobody"]}))


def test_the_dev_suite_cannot_be_searched():
    with pytest.raises(ConfigError,
                       match=r"tune.search_space.dev.num_questions: cannot be searched: the dev suite scores every trial"):
        check_space(_job(search_space={"dev.num_questions": [50, 100]}))


def test_tune_config_validation():
    with pytest.raises(ConfigError, match="points_to_evaluate needs search: optuna"):
        _job(search_space={"selection.keep_per_question": [1, 2]},
             points_to_evaluate=[{"selection.keep_per_question": 1}])
    with pytest.raises(ConfigError, match="keep_per_question=3 is not a choice"):
        _job(search="optuna", search_space={"selection.keep_per_question": [1, 2]},
             points_to_evaluate=[{"selection.keep_per_question": 3}])
    with pytest.raises(ConfigError, match="reduction_factor"):
        _job(reduction_factor=1)
    for nothing in ({"CPU": 0}, {}, {"CPU": 1, "GPU": -1}):
        with pytest.raises(ConfigError, match=r"tune\.trial_resources: .*positive amount of some resource"):
            _job(trial_resources=nothing)
    assert _job(trial_resources={"CPU": 0, "GPU": 0.5}).tune.trial_resources == {"CPU": 0, "GPU": 0.5}


def test_trial_config_and_best_job():
    job = _job(search_space={"selection.keep_per_question": [1, 2], "teacher": ["concise", "verbose"]})
    cfg = trial_config(job.model_dump(mode="json"), {"selection.keep_per_question": 2, "teacher": "verbose"})
    assert cfg.selection.keep_per_question == 2 and len(cfg.teachers) == 2
    with pytest.raises(ConfigError, match="compression.max_pass_rate"):
        trial_config(job.model_dump(mode="json"), {"compression.max_pass_rate": 2.0})
    assert trial_name({"selection.max_questions": 30, "teacher": "concise"}, "ab12") == \
        "trial-ab12-max_questions=30-teacher=concise"
    tree = best_job_tree(job, {"selection.keep_per_question": 1, "teacher": "verbose"})
    assert [t["name"] for t in tree["teachers"]] == ["verbose"] and "tune" not in tree
    assert tree["selection"]["keep_per_question"] == 1 and tree["smoke_test"]["enabled"] is False
    assert tree["dev"] == job.dev.model_dump(mode="json")  # the best job keeps the search's dev suite held out
    JobConfig.model_validate(tree)  # runnable as a job


def _pool_rates(rates: list[float]) -> tuple[list[dict], pd.DataFrame]:
    pool = [{C.QUESTION_ID: f"q{i}", C.QUESTION: f"{i}+0", C.ANSWER: str(i), C.FAMILY: "arith", C.DIFFICULTY: 1}
            for i in range(len(rates))]
    table = pd.DataFrame({C.QUESTION_ID: [q[C.QUESTION_ID] for q in pool], C.NUM_SAMPLES: 4,
                          C.NUM_CORRECT: [int(r * 4) for r in rates], C.PASS_RATE: rates})
    return pool, table


def test_candidate_questions_is_the_union_of_the_bands():
    pool, rates = _pool_rates([0.0, 0.25, 0.5, 0.75, 1.0])
    job = _job(search_space={"compression.max_pass_rate": [0.25, 0.5], "compression.min_pass_rate": [None, 0.9]})
    cfg = job.model_copy(update={"compression": job.compression.model_copy(update={"replay_fraction": 0.0})})
    # bands [0, 0.25] and [0, 0.5]; min 0.9 > max is impossible and skipped
    assert [q[C.QUESTION_ID] for q in candidate_questions(cfg, pool, rates)] == ["q0", "q1", "q2"]


def _graded(rows: list[tuple[str, int, bool, str]]) -> pd.DataFrame:
    return pd.DataFrame([{C.QUESTION_ID: q, C.SAMPLE_INDEX: i, C.TEACHER: "concise", C.CORRECT: ok, C.FORMAT_OK: True,
                          C.COMPLETION: text, C.QUESTION: q, C.ANSWER: "0", C.NUM_TOKENS: len(text)}
                         for q, i, ok, text in rows])


def test_curate_band_m_cap_and_p():
    pool, rates = _pool_rates([0.0, 0.0, 0.0, 1.0])
    graded = _graded([
        ("q0", 0, True, "<think>aaaa</think>"), ("q0", 1, True, "<think>bbbbbbbb</think>"), ("q0", 2, True, "x"),
        ("q1", 0, False, "<think>wrong</think>"),  # no correct sample: sampled (counts toward the cap), no row
        ("q2", 0, True, "<think>cc</think>"), ("q2", 1, True, "<think>dd</think>"),
        ("q3", 0, True, "<think>easy</think>"),  # too easy: dropped by the band
    ])

    def cfg_with(max_questions):
        return config_from_dict({**_job().model_dump(mode="json"), "compression": {"max_pass_rate": 0.5},
                                 "selection": {"samples_per_question": 2, "keep_per_question": 1,
                                               "max_questions": max_questions}})

    tokenize = lambda t: [ord(c) for c in t]  # noqa: E731
    # as in a job: max_questions of the kept questions are sampled (a seeded sample, not the first ones), whether
    # or not one turns out right
    from ray_distill.data.dev import seeded_order

    capped = set(seeded_order(["q0", "q1", "q2"], cfg_with(2).seed)[:2])
    selected, figures = curate(cfg_with(2), pool, rates, graded, tokenize=tokenize)
    assert sorted(selected[C.QUESTION_ID]) == sorted(capped - {"q1"})  # q1 has no correct sample
    assert figures["corpus_questions"] == len(capped - {"q1"})
    selected, figures = curate(cfg_with(3), pool, rates, graded, tokenize=tokenize)
    assert sorted(selected[C.QUESTION_ID]) == ["q0", "q2"]  # P=1 each; q1 unusable; q3 too easy
    assert set(selected[C.SAMPLE_INDEX]) <= {0, 1}  # sample 2 is beyond M=2
    assert figures["corpus_rows"] == 2 and figures["corpus_questions"] == 2 and figures["kept_questions"] == 3
    assert figures["corpus_tokens"] == sum(len(t) for t in selected[C.COMPLETION])
    assert len(figures["corpus_sha256"]) == 64
    two = cfg_with(3)
    two = two.model_copy(update={"selection": two.selection.model_copy(update={"keep_per_question": 2})})
    _, figures = curate(two, pool, rates, graded, tokenize=tokenize)  # distances kept vs available, per question
    assert figures["questions_with_choice"] == 2
    assert figures["mean_distance_selected"] == figures["mean_distance_all_correct"] > 0
    # an impossible band is an error (the trial fails and is recorded)
    cfg = cfg_with(3)
    bad = cfg.model_copy(update={"compression": cfg.compression.model_copy(update={"min_pass_rate": 0.9})})
    with pytest.raises(ValueError):
        curate(bad, pool, rates, graded, tokenize=list)


def test_trials_are_scored_on_the_dev_suite():
    m = dev_metrics({"avg_at_k": 0.5, "ci_low": 0.4, "ci_high": 0.6, "pass_at_k": 0.75, "mean_length": 10.0,
                     "n_questions": 30, "k": 2, "question_rates": {"q": 0.5}})
    assert m == {"score": 0.5, "score_ci_low": 0.4, "score_ci_high": 0.6, "pass_at_k": 0.75, "mean_length": 10.0,
                 "dev_questions": 30, "dev_k": 2}


@pytest.mark.parametrize("key", ["compression.order", "teachers.0.sampling.temperature",
                                 "teachers.1.engine.persona", "seed", "student.base_epochs",
                                 "questions.synthetic.num_questions", "eval.k",
                                 "budget.max_teacher_tokens_per_question", "smoke_test.epochs"])
def test_keys_no_trial_can_vary_are_refused_naming_the_key(key):
    with pytest.raises(ConfigError, match=rf"^tune.search_space.{key}: cannot be searched: ") as err:
        check_space(_job(search_space={key: [1, 2]}))
    assert "\n" not in str(err.value)


def test_unknown_keys_and_metrics_are_refused():
    with pytest.raises(ConfigError, match="tune.search_space.selection.nonsense: no such config key"):
        check_space(_job(search_space={"selection.nonsense": [1]}))
    with pytest.raises(ConfigError, match=r"tune.metric: 'bogus' is not a trial metric; one of \['score'"):
        check_space(_job(metric="bogus", search_space={"selection.keep_per_question": [1]}), METRICS)
    check_space(_job(metric="pass_at_k", search_space={"selection.adaptive.min_samples": [3, 4],
                                                       "format.max_tokens": [50], "compression.k": [2]}), METRICS)


def test_rate_and_verdict_keys_get_inputs_per_value():
    job = _job(search_space={"compression.k": [2, 4], "compression.max_pass_rate": [0.5],
                             "format.max_tokens": [50, 200], "format.require_think": [False],
                             "selection.keep_per_question": [1, 2]})
    assert group_keys(job, "rates") == ["compression.k"]
    assert group_keys(job, "verdicts") == ["format.max_tokens", "format.require_think"]
    rates = variants(job, "rates")
    assert rates == [{"compression.k": 2}, {"compression.k": 4}]
    verdicts = variants(job, "verdicts")
    assert len(verdicts) == 2 and {v["format.max_tokens"] for v in verdicts} == {50, 200}
    # a trial finds the inputs the driver prepared for its own values
    params = {"compression.k": 4, "compression.max_pass_rate": 0.5, "format.max_tokens": 50,
              "format.require_think": False, "selection.keep_per_question": 2}
    assert variant_id(params, group_keys(job, "rates")) in {variant_id(v, list(v)) for v in rates}
    assert variant_id(params, group_keys(job, "verdicts")) == variant_id(verdicts[0], list(verdicts[0]))
    assert variants(_job(search_space={"selection.keep_per_question": [1]}), "rates") == [{}]  # the job's own
    # the union of kept questions covers every rate table
    pool, low = _pool_rates([0.0, 1.0])
    _, high = _pool_rates([1.0, 0.0])
    assert [q[C.QUESTION_ID] for q in candidate_questions(job, pool, {"a": low, "b": high})] == ["q0", "q1"]


def test_adaptive_keys_change_what_a_trial_curates():
    # q0: six distinct correct samples. All M at once: farthest-P picks among six; adaptive sampling stops
    # once it has enough (past the floor, min_samples), and the trial replays that on the stored samples.
    pool, rates = _pool_rates([0.0])
    graded = _graded([("q0", i, True, "<think>" + "ab"[i % 2] * (1 + 3 * i) + "</think>") for i in range(6)])
    tokenize = lambda t: [ord(c) for c in t]  # noqa: E731

    def trial(**adaptive):
        job = _job(search_space={"selection.adaptive.min_samples": [3, 6]}).model_dump(mode="json")
        job["selection"] = {"samples_per_question": 6, "keep_per_question": 2, "adaptive": adaptive}
        job["compression"] = {"max_pass_rate": 0.5}
        return curate(config_from_dict(job), pool, rates, graded, tokenize)[1]

    fixed, floor3, floor6 = trial(), trial(enabled=True, min_samples=3), trial(enabled=True, min_samples=6)
    # floor 3, then a round of P=2 more: five samples hold P + margin (2 + 2) distinct correct ones (adaptive.enough)
    assert [f["candidate_samples"] for f in (fixed, floor3, floor6)] == [6, 5, 6]
    assert floor3["adaptive_enough"] == 1 and floor3["corpus_sha256"] != fixed["corpus_sha256"]
    assert floor6["corpus_sha256"] == fixed["corpus_sha256"]  # the floor at M draws what sampling all M draws


def test_corpus_sha256_is_the_content_not_the_order():
    rows = _graded([("q0", 0, True, "<think>a</think>"), ("q1", 1, True, "<think>b</think>")]).to_dict("records")
    digest = corpus_hash(rows)
    assert corpus_hash(rows[::-1]) == digest == corpus_hash([to_chat_row(r) for r in rows])
    assert corpus_hash([{**rows[0], C.CORRECT: False}, rows[1]]) == digest  # verdicts are metadata
    assert corpus_hash([{**rows[0], C.COMPLETION: "<think>c</think>"}, rows[1]]) != digest
    assert corpus_hash([{**rows[0], C.SAMPLE_INDEX: 5}, rows[1]]) != digest


# ----------------------------------------------------------------------------- search = job (issue 27)


def test_a_teacher_mix_is_refused():
    # a job distils from one teacher: no best_job.yaml could rebuild the rows a mix trial trained on
    with pytest.raises(ConfigError, match=r"^tune.search_space.teacher: 'concise\+verbose' cannot be searched: a job "
                                          r"distils from one teacher") as err:
        check_space(_job(search_space={"teacher": ["concise", "concise+verbose"]}))
    assert "\n" not in str(err.value)
    check_space(_job(search_space={"teacher": ["concise", "verbose"]}))  # one teacher per choice: fine


def test_judge_keys_are_graded_once_per_value():
    # verify.* decides verdicts as format.* does: the driver grades once per value, the trial reads its own
    judge = {"engine": {"kind": "scripted", "persona": "concise"}}
    job = _job({"verify": {"judge": judge}},
               search_space={"verify.judge.mode": ["off", "always"], "format.max_tokens": [50]})
    assert group_keys(job, "verdicts") == ["format.max_tokens", "verify.judge.mode"]
    graded_for = variants(job, "verdicts")
    assert [v["verify.judge.mode"] for v in graded_for] == ["off", "always"]
    params = {"verify.judge.mode": "always", "format.max_tokens": 50}
    assert variant_id(params, group_keys(job, "verdicts")) == variant_id(graded_for[1], list(graded_for[1]))
    assert trial_config(job.model_dump(mode="json"), graded_for[1]).verify.judge.mode == "always"
    # and the best job grades as the trial did
    assert best_job_tree(job, params)["verify"]["judge"]["mode"] == "always"


def test_without_a_teacher_key_the_best_job_pins_the_trials_teacher():
    # every trial distilled from the first teacher: the best job must not run a smoke test that may pick another
    job = _job({"smoke_test": {"enabled": True}}, search_space={"selection.keep_per_question": [1, 2]})
    tree = best_job_tree(job, {"selection.keep_per_question": 2})
    assert [t["name"] for t in tree["teachers"]] == ["concise"] and tree["smoke_test"]["enabled"] is False
    from ray_distill.tuning.space import trial_job

    assert trial_job(job.model_dump(mode="json"), {"selection.keep_per_question": 2}).teachers[0].name == "concise"
    assert JobConfig.model_validate(tree).selection.keep_per_question == 2  # runnable as a job


def test_a_per_question_token_cap_lowers_m_in_the_trial_and_the_best_job():
    from ray_distill.accounting import fixed_samples
    from ray_distill.tuning.trial import trial_corpus

    # 100 tokens a question at ~30 tokens a sample pays for 3 of M=8: the job samples 3, so must the trial
    job = _job({"budget": {"max_teacher_tokens_per_question": 100}, "compression": {"max_pass_rate": 0.5},
                "selection": {"samples_per_question": 8, "keep_per_question": 1}},
               search_space={"selection.keep_per_question": [1, 2]})
    lengths = {"concise": 30.0}
    pool, rates = _pool_rates([0.0, 0.0])
    graded = _graded([(q, i, True, "<think>" + "ab"[i % 2] * (2 + i) + "</think>") for q in ("q0", "q1")
                      for i in range(8)])
    inputs = {"pool": pool, "rates": {variant_id({}, []): rates}, "graded": {"concise": {variant_id({}, []): graded}},
              "probe_lengths": lengths}
    cfg, _, figures = trial_corpus(job.model_dump(mode="json"), {"selection.keep_per_question": 1}, inputs,
                                   tokenize=lambda t: [ord(c) for c in t])
    assert cfg.selection.samples_per_question == 3 and figures["candidate_samples"] == 2 * 3
    tree = best_job_tree(job, {"selection.keep_per_question": 1}, lengths)
    assert tree["selection"]["samples_per_question"] == 3
    assert tree["budget"]["max_teacher_tokens_per_question"] == 100  # the cap stays; it lowers M no further
    assert fixed_samples(JobConfig.model_validate(tree), lengths["concise"]) == 3
    # adaptive sampling applies the cap in its rounds (replayed by the trial): M stays the bound
    adaptive = _job({"budget": {"max_teacher_tokens_per_question": 100},
                     "selection": {"samples_per_question": 8, "keep_per_question": 1, "adaptive": {"enabled": True}}},
                    search_space={"selection.keep_per_question": [1]})
    assert best_job_tree(adaptive, {"selection.keep_per_question": 1}, lengths)["selection"]["samples_per_question"] == 8


def test_the_trial_trains_on_the_jobs_schedule_and_searched_epochs_set_the_budget():
    job = _job({"train": {"epochs": 8}}, search_space={"train.epochs": [4, 8]}, scheduler="asha")
    # a trial that trained all of its own 4 epochs finished (not "stopped early" against the job's 8)
    done = SimpleNamespace(metrics={"epochs": 4, "score": 0.5}, config={"train.epochs": 4}, error=None)
    stopped = SimpleNamespace(metrics={"epochs": 4, "score": 0.5}, config={"train.epochs": 8}, error=None)
    assert trial_row(job, done)["status"] == "finished" and trial_row(job, stopped)["status"] == "stopped_early"
    from ray_distill.tuning.space import max_epochs, trial_job

    assert max_epochs(job) == 8  # ASHA's max_t: the most epochs a trial trains
    assert trial_job(job.model_dump(mode="json"), {"train.epochs": 4}).train.schedule_epochs == 4
    assert best_job_tree(job, {"train.epochs": 4})["train"]["schedule_epochs"] == 4
    # a job's own schedule is what its trials train on, and what the best job keeps
    own = _job({"train": {"epochs": 8, "schedule_epochs": 12}}, search_space={"train.epochs": [4, 8]})
    assert trial_job(own.model_dump(mode="json"), {"train.epochs": 4}).train.schedule_epochs == 12
    assert best_job_tree(own, {"train.epochs": 4})["train"]["schedule_epochs"] == 12
