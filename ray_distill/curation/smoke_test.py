"""Teacher selection by smoke test (pure): rank candidate teachers by how well a student fine-tuned on
each teacher's probe corpus scores, not by the teacher's own accuracy.

    ranking = rank_teachers([
        {"teacher": "qwq", "student_score": 0.41, "teacher_accuracy": 0.80, "mean_length": 310, "entropy": 0.48},
        {"teacher": "r1",  "student_score": 0.37, "teacher_accuracy": 0.86, "mean_length": 420, "entropy": 0.71},
    ])
    winner(ranking)  # "qwq"

Order: ``student_score`` descending; ties go to the lower corpus entropy (the paper's diagnostic: lower
entropy corpora were learned better); then the teacher name, so the order is total. A missing
entropy (NaN/None) sorts after any known entropy.
"""

from __future__ import annotations

import logging
import math

logger = logging.getLogger(__name__)

RESULT_KEYS = ("teacher", "student_score", "teacher_accuracy", "mean_length", "entropy")


def rank_teachers(results: list[dict]) -> list[dict]:
    """Sorted copies of ``results`` with a 1-based ``rank`` field."""
    if not results:
        raise ValueError("rank_teachers: no smoke-test results")
    for r in results:
        missing = [k for k in RESULT_KEYS if k not in r]
        if missing:
            raise ValueError(f"rank_teachers: result for {r.get('teacher', '?')!r} lacks {missing}")
        if _is_nan(r["student_score"]):
            raise ValueError(f"rank_teachers: teacher {r['teacher']!r} has no student_score")
    names = [r["teacher"] for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"rank_teachers: duplicate teachers in {names}")
    ordered = sorted(results, key=_sort_key)
    ranking = [{**r, "rank": i} for i, r in enumerate(ordered, start=1)]
    logger.info("teacher ranking: %s", [(r["teacher"], r["student_score"]) for r in ranking])
    return ranking


def winner(ranking: list[dict]) -> str:
    """The best teacher's name (ranks ``ranking`` again, so unranked results work too)."""
    return rank_teachers(ranking)[0]["teacher"]


def _sort_key(r: dict) -> tuple:
    entropy = r["entropy"]
    unknown = _is_nan(entropy)
    return (-float(r["student_score"]), unknown, 0.0 if unknown else float(entropy), str(r["teacher"]))


def _is_nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
