import pandas as pd
import pytest

from ray_distill import columns as C
from ray_distill.ablation import (COMPRESSED, CORRECT, DIVERSE, RANDOM, ablation_corpora,
                                  best_accuracy_teacher, summarize)


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


def test_summary_over_seeds_keeps_arm_order_and_spread():
    table = pd.DataFrame([
        {"arm": arm, "teacher": "t", "rows": 10, "seed": seed, "suite": suite, "avg_at_k": score,
         "ci_low": score - 0.1, "ci_high": score + 0.1}
        for arm, scores in [("+correct", [0.2, 0.4, 0.3]), ("random", [0.1, 0.1, 0.1])]
        for seed, score in enumerate(scores) for suite in ("in", "ood")])
    s = summarize(table)
    assert s[["arm", "suite"]].values.tolist() == [["+correct", "in"], ["+correct", "ood"], ["random", "in"],
                                                   ["random", "ood"]]
    first = s.iloc[0]
    assert (first["mean"], first["min"], first["max"], first["seeds"]) == (pytest.approx(0.3), 0.2, 0.4, 3)
    assert first["sd"] == pytest.approx(0.1) and first["ci_low"] == pytest.approx(0.2)
    assert s.iloc[2]["sd"] == pytest.approx(0.0)
    one = summarize(table[table["seed"] == 0])
    assert (one["seeds"] == 1).all() and (one["sd"] == 0).all()  # one seed: no NaN spread


def test_ablation_seeds_are_validated():
    from pydantic import ValidationError

    from ray_distill.config import AblationConfig

    assert AblationConfig().seeds == [0]
    with pytest.raises(ValidationError, match="distinct"):
        AblationConfig(seeds=[1, 1])
    with pytest.raises(ValidationError):
        AblationConfig(seeds=[])


def test_chart_has_a_bar_per_arm_and_a_dot_per_seed():
    from ray_distill.ablation import _chart

    table = pd.DataFrame([{"arm": arm, "teacher": "t", "rows": 10, "seed": seed, "suite": suite, "avg_at_k": 0.1 * seed,
                           "ci_low": 0.0, "ci_high": 0.5} for arm in ("a", "b", "c") for seed in (1, 2)
                          for suite in ("in", "ood")])
    fig = _chart(table, summarize(table))
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert len(ax.patches) == 3 and "mean ± sd over 2 seeds" in ax.get_title()
        assert sum(len(line.get_ydata()) for line in ax.lines if line.get_marker() == ".") == 6
