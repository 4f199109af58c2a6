"""avg@k and grading, with hand-computed numbers (pure, no Ray)."""

from __future__ import annotations

import pandas as pd
import pytest

from ray_distill import columns as C
from ray_distill.evaluation.evaluate import R_GENERATION_ERROR, avg_at_k, grade_samples


def _samples(correct_per_question: dict[str, list[int]], length: int = 10) -> pd.DataFrame:
    return pd.DataFrame([{C.QUESTION_ID: q, C.CORRECT: bool(c), C.NUM_TOKENS: length + i}
                         for q, cs in correct_per_question.items() for i, c in enumerate(cs)])


def test_avg_at_k_hand_computed():
    # per-question rates 0.5, 0.75, 0.25, 0.5 -> mean 0.5; sample sd = sqrt(0.125 / 3) = 0.2041241
    # half width = 1.959964 * 0.2041241 / sqrt(4) = 0.2000380
    df = _samples({"a": [1, 0, 1, 0], "b": [1, 1, 1, 0], "c": [0, 0, 1, 0], "d": [0, 1, 0, 1]})
    m = avg_at_k(df)
    assert m["avg_at_k"] == pytest.approx(0.5)
    assert m["pass_at_k"] == pytest.approx(1.0)
    assert m["ci_low"] == pytest.approx(0.2999620, abs=1e-6) and m["ci_high"] == pytest.approx(0.7000380, abs=1e-6)
    assert (m["n_questions"], m["k"]) == (4, 4)
    assert m["mean_length"] == pytest.approx(11.5)


def test_avg_at_k_pass_at_k_and_clipping():
    # rates 1/2, 0, 0 -> mean 1/6; pass@k 1/3; sd = sqrt(1/12); half = 1.959964 * 0.2886751 / sqrt(3) = 0.3266607
    m = avg_at_k(_samples({"a": [1, 0], "b": [0, 0], "c": [0, 0]}))
    assert m["avg_at_k"] == pytest.approx(1 / 6) and m["pass_at_k"] == pytest.approx(1 / 3)
    assert m["ci_low"] == 0.0 and m["ci_high"] == pytest.approx(1 / 6 + 0.3266607, abs=1e-6)


def test_avg_at_k_single_question_and_refusals():
    m = avg_at_k(_samples({"a": [1, 1, 0]}))
    assert m["avg_at_k"] == pytest.approx(2 / 3) and m["ci_low"] == m["ci_high"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="unequal sample counts"):
        avg_at_k(_samples({"a": [1, 1], "b": [0]}))
    with pytest.raises(ValueError, match="at least one"):
        avg_at_k(_samples({}))


def test_grade_samples_uses_the_grader():
    df = pd.DataFrame({
        C.COMPLETION: ["<think>1+2=3</think>\\boxed{3}", "<think>1+2=4</think>\\boxed{4}", "\\boxed{3}", ""],
        C.ANSWER: ["3", "3", "3", "3"],
        C.ERROR: ["", "", "", "RuntimeError: boom"],
    })
    g = grade_samples(df)
    assert g[C.CORRECT].tolist() == [True, False, True, False]
    assert g[C.FORMAT_OK].tolist() == [True, True, False, False]
    assert g[C.PREDICTED].tolist()[:3] == ["3", "4", "3"]
    assert g[C.REASON].tolist() == ["", "wrong_answer", "missing_think_open", R_GENERATION_ERROR]
    assert list(df.columns) == [C.COMPLETION, C.ANSWER, C.ERROR]  # input untouched
