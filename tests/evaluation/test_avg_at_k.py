"""avg@k and grading, with hand-computed numbers (pure, no Ray)."""

from __future__ import annotations

import pandas as pd
import pytest

from ray_distill import columns as C
from ray_distill.evaluation.evaluate import R_GENERATION_ERROR, avg_at_k, grade_samples, pass_at_k


def _samples(correct_per_question: dict[str, list[int]], length: int = 10) -> pd.DataFrame:
    return pd.DataFrame([{C.QUESTION_ID: q, C.CORRECT: bool(c), C.NUM_TOKENS: length + i}
                         for q, cs in correct_per_question.items() for i, c in enumerate(cs)])


def test_avg_at_k_hand_computed():
    # per-question rates 0.5, 0.75, 0.25, 0.5 -> mean 0.5 over n=4 questions; Wilson (z=1.959964):
    # centre 0.5, half = z * sqrt(0.25/4 + z^2/64) / (1 + z^2/4) = 0.3499610
    df = _samples({"a": [1, 0, 1, 0], "b": [1, 1, 1, 0], "c": [0, 0, 1, 0], "d": [0, 1, 0, 1]})
    m = avg_at_k(df)
    assert m["avg_at_k"] == pytest.approx(0.5)
    assert m["pass_at_k"] == pytest.approx(1.0)
    assert m["ci_low"] == pytest.approx(0.1500390, abs=1e-6) and m["ci_high"] == pytest.approx(0.8499610, abs=1e-6)
    assert (m["n_questions"], m["k"]) == (4, 4)
    assert m["mean_length"] == pytest.approx(11.5)
    assert m["question_rates"] == {"a": 0.5, "b": 0.75, "c": 0.25, "d": 0.5}  # for paired comparisons


def test_avg_at_k_pass_at_k_and_clipping():
    # rates 1/2, 0, 0 -> mean 1/6; pass@k 1/3; Wilson over n=3: [0.0176528, 0.6900119] (the Wald interval
    # 1/6 -+ 0.3266607 would be clipped at 0)
    m = avg_at_k(_samples({"a": [1, 0], "b": [0, 0], "c": [0, 0]}))
    assert m["avg_at_k"] == pytest.approx(1 / 6) and m["pass_at_k"] == pytest.approx(1 / 3)
    assert m["pass_at_1"] == pytest.approx(1 / 6)
    assert m["ci_low"] == pytest.approx(0.0176528, abs=1e-6) and m["ci_high"] == pytest.approx(0.6900119, abs=1e-6)


def test_avg_at_k_single_question_and_refusals():
    m = avg_at_k(_samples({"a": [1, 1, 0]}))
    assert m["avg_at_k"] == pytest.approx(2 / 3)  # one question: a wide interval, not a zero-width one
    assert m["ci_low"] == pytest.approx(0.0941860, abs=1e-6) and m["ci_high"] == pytest.approx(0.9746638, abs=1e-6)
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


def test_pass_at_k_unbiased_estimator_hand_computed():
    # n=5 samples, c=2 correct: pass@1 = 2/5; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10; pass@4 = 1 - 0/5 = 1
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 4) == 1.0
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(4, 5, 1)


def test_failed_generations_count_as_incorrect_not_dropped():
    # question a: 2 samples, one correct, one failed generation; b: both failed.
    df = pd.DataFrame({
        C.QUESTION_ID: ["a", "a", "b", "b"],
        C.COMPLETION: ["<think>1+2=3</think>\\boxed{3}", "", "", "<think>x</think>\\boxed{5}"],
        C.ANSWER: ["3", "3", "5", "5"],
        C.NUM_TOKENS: [12, 0, 0, 7],
        # the last row has text but its request failed: it still counts as a failure
        C.ERROR: ["", "TimeoutError: engine", "RuntimeError: boom", "RuntimeError: cut off"],
    })
    graded = grade_samples(df)
    assert graded[C.CORRECT].tolist() == [True, False, False, False]
    assert graded[C.REASON].tolist()[1:] == [R_GENERATION_ERROR] * 3
    m = avg_at_k(graded)
    assert (m["n_questions"], m["k"], m["n_errors"]) == (2, 2, 3)  # nothing dropped
    assert m["avg_at_k"] == pytest.approx(0.25) and m["pass_at_k"] == pytest.approx(0.5)
    assert m["mean_length"] == pytest.approx(12.0) and m["tokens"] == 12  # successful generations only
    # a correct verdict on an error row (e.g. graded elsewhere) is not trusted either
    assert avg_at_k(df.assign(**{C.CORRECT: True}))["avg_at_k"] == pytest.approx(0.25)


def test_suites_from_math_and_code_files_are_graded_by_the_one_grader():
    """Suite files on an fsspec URL: math rows (answer) and code rows (tests, run in the sandbox)."""
    import json

    import fsspec

    from ray_distill.config import SuiteConfig
    from ray_distill.data.sources import load_source

    with fsspec.open("memory://suites/math.jsonl", "w") as f:
        f.write(json.dumps({"question": "What is 2+3?", "answer": "5"}) + "\n")
    with fsspec.open("memory://suites/code.jsonl", "w") as f:
        f.write(json.dumps({"question": "Print the sum of two integers.",
                            "tests": [{"input": "1 2\n", "output": "3\n"},
                                      {"input": "5 5\n", "output": "10\n"}]}) + "\n")
    rows = {name: load_source(SuiteConfig(name=name, path=f"memory://suites/{name}.jsonl"))[0]
            for name in ("math", "code")}
    program = "<think>read, add</think>\n```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    completions = {"math": ["<think>2+3=5</think>\\boxed{5}", "<think>2+3=6</think>\\boxed{6}"],
                   "code": [program, program.replace("a + b", "a - b")]}
    df = pd.DataFrame([{**q, C.COMPLETION: text, C.NUM_TOKENS: len(text), C.ERROR: ""}
                       for name, qs in rows.items() for q in qs for text in completions[name]])
    graded = grade_samples(df)
    assert graded[C.CORRECT].tolist() == [True, False, True, False]
    assert graded[C.REASON].iloc[3] == "code_wrong_output"
    m = avg_at_k(graded)
    assert (m["n_questions"], m["k"], m["avg_at_k"], m["pass_at_k"]) == (2, 2, 0.5, 1.0)
