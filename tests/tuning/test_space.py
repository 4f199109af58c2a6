"""The search space, rungs, teacher mixes, trial configs and per-trial curation (pure, no Ray)."""

from __future__ import annotations

import pandas as pd
import pytest

from ray_distill import columns as C
from ray_distill.config import ConfigError, JobConfig, config_from_dict
from ray_distill.tuning.space import (best_job_tree, candidate_questions, check_space, rungs, teacher_names,
                                      trial_config, trial_name)
from ray_distill.tuning.trial import curate, dev_metrics

TEACHERS = [{"name": n, "engine": {"kind": "scripted", "persona": n}} for n in ("concise", "verbose")]


def _job(**tune) -> JobConfig:
    return config_from_dict({"questions": {"synthetic": {"num_questions": 5}}, "teachers": TEACHERS,
                             "dev": {"suite": {"name": "d", "synthetic": {"num_questions": 3, "seed": 9}}},
                             "eval": {"suites": [{"name": "a", "synthetic": {"num_questions": 3}},
                                                 {"name": "b", "domain": "ood", "synthetic": {"num_questions": 3}}]},
                             "tune": tune})


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
    with pytest.raises(ConfigError, match=r"tune.search_space.dev.num_questions: the dev suite scores every trial"):
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
                          C.COMPLETION: text, C.QUESTION: q, C.ANSWER: "0"} for q, i, ok, text in rows])


def test_curate_band_m_cap_and_p():
    pool, rates = _pool_rates([0.0, 0.0, 0.0, 1.0])
    graded = _graded([
        ("q0", 0, True, "<think>aaaa</think>"), ("q0", 1, True, "<think>bbbbbbbb</think>"), ("q0", 2, True, "x"),
        ("q1", 0, False, "<think>wrong</think>"),  # no correct sample: does not count toward max_questions
        ("q2", 0, True, "<think>cc</think>"), ("q2", 1, True, "<think>dd</think>"),
        ("q3", 0, True, "<think>easy</think>"),  # too easy: dropped by the band
    ])
    cfg = config_from_dict({**_job().model_dump(mode="json"),
                            "compression": {"max_pass_rate": 0.5}, "selection": {"samples_per_question": 2,
                                                                                 "keep_per_question": 1,
                                                                                 "max_questions": 2}})
    selected, figures = curate(cfg, pool, rates, graded, tokenize=lambda t: [ord(c) for c in t])
    assert sorted(selected[C.QUESTION_ID]) == ["q0", "q2"]  # P=1 each; q1 unusable; q3 too easy
    assert set(selected[C.SAMPLE_INDEX]) <= {0, 1}  # sample 2 is beyond M=2
    assert figures["corpus_rows"] == 2 and figures["corpus_questions"] == 2 and figures["kept_questions"] == 3
    assert figures["corpus_tokens"] == sum(len(t) for t in selected[C.COMPLETION])
    # an impossible band is an error (the trial fails and is recorded)
    bad = cfg.model_copy(update={"compression": cfg.compression.model_copy(update={"min_pass_rate": 0.9})})
    with pytest.raises(ValueError):
        curate(bad, pool, rates, graded, tokenize=list)


def test_trials_are_scored_on_the_dev_suite():
    m = dev_metrics({"avg_at_k": 0.5, "ci_low": 0.4, "ci_high": 0.6, "pass_at_k": 0.75, "mean_length": 10.0,
                     "n_questions": 30, "question_rates": {"q": 0.5}})
    assert m == {"score": 0.5, "score_ci_low": 0.4, "score_ci_high": 0.6, "pass_at_k": 0.75, "mean_length": 10.0,
                 "dev_questions": 30}
