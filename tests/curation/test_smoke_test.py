"""The smoke test's pure logic: equal training rows, ranking by one kind of score, teachers without
verified rows last with their reason, paired margins and the top-two verdict."""

from __future__ import annotations

import math

import pytest

from ray_distill.curation.smoke_test import (MIN_SHARED_QUESTIONS, NO_VERIFIED_ROWS, STUDENT_SCORE, TEACHER_ACCURACY,
                                             below_floor_reason, margin_ci, mean_ci, paired_margin, rank_teachers,
                                             top_two_note, training_questions, verified_floor, winner)

NAN = float("nan")


def _r(teacher: str, score: float, entropy: float | None, acc: float = 0.9, reason: str = "") -> dict:
    return {"teacher": teacher, "student_score": score, "teacher_accuracy": acc, "mean_length": 100.0,
            "entropy": entropy, "reason": reason}


# ----------------------------------------------------------------------------- equal training rows


def test_every_candidate_trains_on_the_same_number_of_rows_shared_questions_first():
    verified = {"a": [f"q{i}" for i in range(10)],  # verified everything
                "b": ["q0", "q1", "q2", "q3", "q7", "q8"],  # 6
                "c": ["q1", "q2", "q3", "q5", "q6", "q8", "q9"]}  # 7
    picks = training_questions(verified, seed=0)
    assert {name: len(p) for name, p in picks.items()} == {"a": 6, "b": 6, "c": 6}  # n = min = 6
    shared = {"q1", "q2", "q3", "q8"}  # verified by all three: every candidate trains on them
    assert all(shared <= set(p) for p in picks.values())
    assert set(picks["b"]) == set(verified["b"])  # the smallest candidate keeps all of its rows
    assert all(set(picks[n]) <= set(verified[n]) for n in verified)  # only verified questions
    assert picks == training_questions(verified, seed=0)  # deterministic
    assert len({tuple(p) for p in (training_questions(verified, seed=s)["a"] for s in range(8))}) > 1  # seeded


def test_seeded_fill_prefers_the_same_questions_across_candidates():
    # a and b verified the same 20 questions, c only 5 others: a and b fill from one seeded order,
    # so their 5 picks coincide (the same questions wherever their verified sets allow it)
    same = [f"q{i}" for i in range(20)]
    picks = training_questions({"a": same, "b": list(reversed(same)), "c": [f"x{i}" for i in range(5)]}, seed=3)
    assert len(picks["a"]) == len(picks["b"]) == len(picks["c"]) == 5
    assert picks["a"] == picks["b"]


def test_a_candidate_without_verified_rows_trains_on_nothing_and_sets_no_common_count():
    picks = training_questions({"a": ["q0", "q1", "q2"], "b": ["q1", "q2"], "none": []}, seed=0)
    assert picks["none"] == [] and sorted(picks["a"]) == sorted(picks["b"]) == ["q1", "q2"]
    assert training_questions({"x": [], "y": []}, seed=0) == {"x": [], "y": []}


# ----------------------------------------------------------------------------- ranking


def test_rank_by_student_score_not_teacher_accuracy():
    ranking = rank_teachers([_r("best_bench", 0.30, 0.7, acc=0.99), _r("good_teacher", 0.42, 0.5, acc=0.80)])
    assert [(r["teacher"], r["rank"], r["ranked_by"]) for r in ranking] == [
        ("good_teacher", 1, STUDENT_SCORE), ("best_bench", 2, STUDENT_SCORE)]
    assert winner(ranking) == "good_teacher"


def test_ties_prefer_lower_entropy_then_name():
    results = [_r("c", 0.5, None), _r("b", 0.5, 0.48), _r("a", 0.5, 0.70), _r("d", 0.5, 0.48), _r("e", 0.1, 0.1)]
    ranking = rank_teachers(results)
    assert [r["teacher"] for r in ranking] == ["b", "d", "a", "c", "e"]
    assert winner(ranking) == "b"


def test_no_verified_rows_ranks_last_with_its_reason_never_by_its_own_accuracy():
    # "perfect" wrote no verified row (e.g. all without <think>): its accuracy of 1.0 must not rank it
    results = [_r("perfect", NAN, None, acc=1.0, reason=NO_VERIFIED_ROWS), _r("weak", 0.05, 0.9, acc=0.3),
               _r("ok", 0.20, 0.5, acc=0.6)]
    ranking = rank_teachers(results)
    assert [r["teacher"] for r in ranking] == ["ok", "weak", "perfect"]
    assert ranking[-1]["reason"] == NO_VERIFIED_ROWS and winner(ranking) == "ok"
    # the same when the smoke test is off and the teachers' own accuracy ranks them
    by_acc = rank_teachers(results, by=TEACHER_ACCURACY)
    assert [r["teacher"] for r in by_acc] == ["ok", "weak", "perfect"]
    assert {r["ranked_by"] for r in by_acc} == {TEACHER_ACCURACY}


def test_no_scored_candidate_has_no_winner():
    ranking = rank_teachers([_r("a", NAN, None, reason=NO_VERIFIED_ROWS), _r("b", NAN, None, reason=NO_VERIFIED_ROWS)])
    with pytest.raises(ValueError, match="no candidate teacher has a score.*a: no verified probe rows"):
        winner(ranking)
    assert "one scored candidate" in top_two_note(ranking)


def test_invalid_results():
    with pytest.raises(ValueError, match="no smoke-test"):
        rank_teachers([])
    with pytest.raises(ValueError, match="duplicate"):
        rank_teachers([_r("a", 0.1, 0.1), _r("a", 0.2, 0.1)])
    with pytest.raises(ValueError, match="lacks"):
        rank_teachers([{"teacher": "a", "student_score": 0.1}])
    with pytest.raises(ValueError, match="'a' has no student_score and no reason"):
        rank_teachers([_r("a", NAN, 0.1), _r("b", 0.2, 0.1)])
    with pytest.raises(ValueError, match="by must be one of"):
        rank_teachers([_r("a", 0.1, 0.1)], by="entropy")


# ----------------------------------------------------------------------------- CIs and separability


def test_mean_ci_and_paired_margin_hand_computed():
    m, lo, hi = mean_ci([0.0, 0.5, 1.0, 0.5])  # sd = sqrt(1/6) = 0.408248; half = 1.959964 * 0.408248 / 2
    assert m == 0.5 and lo == pytest.approx(0.5 - 0.4000760, abs=1e-6) and hi == pytest.approx(0.5 + 0.4000760, abs=1e-6)
    assert mean_ci([0.25]) == (0.25, 0.25, 0.25)
    assert all(math.isnan(v) for v in mean_ci([]))
    # differences 0.25, 0.25, 0.5 over the questions both were scored on (q9 is only in a)
    a, b = {"q1": 0.5, "q2": 0.75, "q3": 1.0, "q9": 1.0}, {"q1": 0.25, "q2": 0.5, "q3": 0.5}
    d, lo, hi, n = paired_margin(a, b)
    # t interval, n = 3 degrees of freedom, variance (0.5^2 + 2 x 0.1443376^2) / 3 = 0.0972222 (the prior's)
    half = 3.182446 * (0.0972222 / 3) ** 0.5
    assert n == 3 and d == pytest.approx(1 / 3)
    assert lo == pytest.approx(1 / 3 - half, abs=1e-5) and hi == pytest.approx(1 / 3 + half, abs=1e-5)
    assert hi > d > 0 > lo  # three questions cannot separate a +0.33 margin


def test_the_margin_interval_never_has_zero_width():
    """One shared question, or every difference equal, is not certainty: the interval has width (one question
    spans all of [-1, 1]), and fewer than MIN_SHARED_QUESTIONS shared questions are never separable."""
    d, lo, hi = margin_ci([1.0])
    assert (d, lo, hi) == (1.0, -1.0, 1.0)
    d, lo, hi = margin_ci([0.0] * 30)
    assert d == 0.0 and lo < 0 < hi
    few = {f"q{i}": 1.0 for i in range(MIN_SHARED_QUESTIONS - 1)}
    none = {q: 0.0 for q in few}
    ranking = rank_teachers([_r("a", 1.0, 0.5), _r("b", 0.0, 0.5)], per_question={"a": few, "b": none})
    assert ranking[0]["margin_ci_low"] > 0 and ranking[0]["separable"] is False  # clear, but too few questions
    assert top_two_note(ranking).endswith(f"only {MIN_SHARED_QUESTIONS - 1} shared questions (< {MIN_SHARED_QUESTIONS}))")
    many = {f"q{i}": 1.0 for i in range(MIN_SHARED_QUESTIONS)}
    ranking = rank_teachers([_r("a", 1.0, 0.5), _r("b", 0.0, 0.5)],
                            per_question={"a": many, "b": {q: 0.0 for q in many}})
    assert ranking[0]["separable"] is True


def test_a_candidate_below_the_floor_ranks_last_instead_of_starving_the_others():
    """A teacher that verified 3 of 400 probe questions does not make every smoke student train on 3 rows: it is
    left out of the common count (not trained) and its reason says why."""
    assert verified_floor(400, 0.1) == 40 and verified_floor(400, 25) == 25 and verified_floor(5, 0.1) == 1
    verified = {"good": [f"q{i}" for i in range(200)], "fair": [f"q{i}" for i in range(100, 260)],
                "starved": ["q1", "q2", "q3"]}
    picks = training_questions(verified, seed=0, floor=verified_floor(400, 0.1))
    assert len(picks["good"]) == len(picks["fair"]) == 160 and picks["starved"] == []
    assert training_questions(verified, seed=0)["good"].__len__() == 3  # without a floor: everyone starves
    assert below_floor_reason(3, 40) == "too few verified probe rows: 3 < 40"
    assert below_floor_reason(0, 40) == NO_VERIFIED_ROWS and below_floor_reason(40, 40) == ""
    ranking = rank_teachers([_r("good", 0.3, 0.5), _r("fair", 0.2, 0.5),
                             _r("starved", NAN, 0.1, acc=0.01, reason=below_floor_reason(3, 40))])
    assert [r["teacher"] for r in ranking] == ["good", "fair", "starved"] and winner(ranking) == "good"


def test_paired_margin_separates_what_overlapping_cis_cannot():
    # every question: a is 0.1 better than b, but questions range from easy to hard, so the two CIs of
    # the means overlap widely while the paired difference is clearly positive
    b = {f"q{i}": i / 20 for i in range(20)}
    a = {q: v + 0.1 for q, v in b.items()}
    ranking = rank_teachers([_r("b", mean_ci(b.values())[0], 0.5), _r("a", mean_ci(a.values())[0], 0.5)],
                            per_question={"a": a, "b": b})
    assert mean_ci(a.values())[1] < mean_ci(b.values())[2]  # the CIs overlap
    first = ranking[0]
    assert first["teacher"] == "a" and first["separable"] is True
    assert first["margin"] == pytest.approx(0.1) and 0 < first["margin_ci_low"] < 0.1 < first["margin_ci_high"]
    note = top_two_note(ranking)
    assert note.startswith("top two separable at 95%: a - b = +0.100")
    assert note.endswith("(student_score, paired over the same 20 questions)")
    assert ranking[1]["separable"] is None and math.isnan(ranking[1]["margin"])  # the last scored row


def test_top_two_that_cannot_be_separated_are_flagged():
    a = {"q0": 1.0, "q1": 0.0, "q2": 0.5, "q3": 0.5}
    b = {"q0": 0.0, "q1": 1.0, "q2": 0.5, "q3": 0.25}
    c = {"q0": 0.0, "q1": 0.0, "q2": 0.0, "q3": 0.0}
    results = [_r("a", 0.5, 0.5), _r("b", 0.4375, 0.5), _r("c", 0.0, 0.5),
               _r("d", NAN, None, reason=NO_VERIFIED_ROWS)]
    ranking = rank_teachers(results, per_question={"a": a, "b": b, "c": c})
    # b - c is positive on 3 of the 4 questions and never negative (a z interval over them excluded 0), but four
    # questions cannot separate them
    assert [r["separable"] for r in ranking] == [False, False, None, None]
    assert ranking[1]["margin_ci_low"] < 0 < ranking[1]["margin"] and ranking[1]["margin_questions"] == 4
    assert top_two_note(ranking).startswith("top two cannot be separated at 95%: a - b = +0.062 [")
    assert "no per-question scores" in top_two_note(rank_teachers(results))  # without them: no verdict
