"""Teacher ranking by the student's score, entropy as the tie-break."""

from __future__ import annotations

import pytest

from ray_distill.curation.smoke_test import rank_teachers, winner


def _r(teacher: str, score: float, entropy: float | None, acc: float = 0.9) -> dict:
    return {"teacher": teacher, "student_score": score, "teacher_accuracy": acc, "mean_length": 100.0, "entropy": entropy}


def test_rank_by_student_score_not_teacher_accuracy():
    ranking = rank_teachers([_r("best_bench", 0.30, 0.7, acc=0.99), _r("good_teacher", 0.42, 0.5, acc=0.80)])
    assert [(r["teacher"], r["rank"]) for r in ranking] == [("good_teacher", 1), ("best_bench", 2)]
    assert winner(ranking) == "good_teacher"


def test_ties_prefer_lower_entropy_then_name():
    results = [_r("c", 0.5, None), _r("b", 0.5, 0.48), _r("a", 0.5, 0.70), _r("d", 0.5, 0.48), _r("e", 0.1, 0.1)]
    assert [r["teacher"] for r in rank_teachers(results)] == ["b", "d", "a", "c", "e"]
    assert winner(results) == "b"


def test_invalid_results():
    with pytest.raises(ValueError, match="no smoke-test"):
        rank_teachers([])
    with pytest.raises(ValueError, match="duplicate"):
        rank_teachers([_r("a", 0.1, 0.1), _r("a", 0.2, 0.1)])
    with pytest.raises(ValueError, match="lacks"):
        rank_teachers([{"teacher": "a", "student_score": 0.1}])
