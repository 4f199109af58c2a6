import pandas as pd
import pytest

from ray_distill import columns as C
from ray_distill.ablation import (COMPRESSED, CORRECT, DIVERSE, RANDOM, ablation_corpora,
                                  best_accuracy_teacher)


def graded() -> pd.DataFrame:
    rows = []
    for q in range(6):
        for i in range(4):
            rows.append({C.QUESTION_ID: f"q{q}", C.SAMPLE_INDEX: i, C.COMPLETION: f"{q}-{i}",
                         C.FORMAT_OK: i != 3, C.CORRECT: i != 2})
    return pd.DataFrame(rows)


def test_arms_have_equal_size_and_their_own_filters():
    g = graded()
    kept = {"q0", "q1", "q2"}
    diverse = g[(g[C.QUESTION_ID].isin(kept)) & (g[C.SAMPLE_INDEX] <= 1)]  # 6 rows
    arms = ablation_corpora(g, kept, diverse, n=6, seed=0)
    assert {k: len(v) for k, v in arms.items()} == {RANDOM: 6, CORRECT: 6, COMPRESSED: 6, DIVERSE: 6}
    for arm in (CORRECT, COMPRESSED, DIVERSE):
        assert (arms[arm][C.FORMAT_OK] & arms[arm][C.CORRECT]).all()
    assert set(arms[COMPRESSED][C.QUESTION_ID]) <= kept
    assert arms[DIVERSE].equals(diverse.sort_values([C.QUESTION_ID, C.SAMPLE_INDEX]))
    # deterministic for a seed
    again = ablation_corpora(g, kept, diverse, n=6, seed=0)
    assert all(arms[k].equals(again[k]) for k in arms)


def test_budget_larger_than_an_arm_is_an_error():
    g = graded()
    with pytest.raises(ValueError, match=r"'\+correct\+compressed' has 6 rows, fewer than the budget of 7"):
        ablation_corpora(g, {"q0", "q1", "q2"}, g, n=7, seed=0)


def test_best_accuracy_teacher_ignores_the_smoke_test_rank():
    ranking = [{"teacher": "concise", "rank": 1, "teacher_accuracy": 0.95},
               {"teacher": "verbose", "rank": 2, "teacher_accuracy": 1.0},
               {"teacher": "sloppy", "rank": 3, "teacher_accuracy": 1.0}]
    assert best_accuracy_teacher(ranking) == "verbose"  # tie on accuracy: the better smoke-test rank
