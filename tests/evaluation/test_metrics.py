"""Evaluation statistics against independent computations: pass@k by brute force over every subset of the
samples, Wilson intervals against SciPy's, macro averages and the per-suite sampling plan (pure, no Ray)."""

from __future__ import annotations

import itertools
import math

import pandas as pd
import pytest
from scipy.stats import binomtest

from ray_distill import columns as C
from ray_distill.evaluation.evaluate import SUITE, avg_at_k, engine_passes, grade_samples, suite_plan
from ray_distill.evaluation.metrics import macro_average, pass_at_k, wilson_interval


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_equals_the_share_of_k_subsets_holding_a_correct_sample(n):
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(samples, k))
            brute = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(brute), (n, c, k)
            assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_pass_at_k_from_more_samples_than_k():
    # 16 samples, 3 correct: pass@1 = 3/16, pass@4 = 1 - C(13,4)/C(16,4) = 1 - 715/1820
    assert pass_at_k(16, 3, 1) == pytest.approx(3 / 16)
    assert pass_at_k(16, 3, 4) == pytest.approx(1 - 715 / 1820)
    assert pass_at_k(16, 13, 4) == 1.0  # fewer than k wrong samples: every k-subset holds a right one
    df = pd.DataFrame([{C.QUESTION_ID: q, C.CORRECT: i < c, C.NUM_TOKENS: 1}
                       for q, c in (("a", 3), ("b", 0)) for i in range(16)])
    m = avg_at_k(df, pass_k=[1, 4, 16])
    assert m["pass_at_4"] == pytest.approx((1 - 715 / 1820) / 2)
    assert m["pass_at_16"] == m["pass_at_k"] == pytest.approx(0.5) and m["pass_at_1"] == pytest.approx(3 / 32)
    with pytest.raises(ValueError, match="pass@32 needs at least 32 samples per question, got 16"):
        avg_at_k(df, pass_k=[32])


@pytest.mark.parametrize("successes, n", [(0, 1), (0, 30), (30, 30), (2, 10), (7, 9), (50, 100), (1, 1000)])
def test_wilson_interval_matches_scipy(successes, n):
    expected = binomtest(successes, n).proportion_ci(method="wilson")
    low, high = wilson_interval(successes / n, n)
    assert (low, high) == (pytest.approx(expected.low), pytest.approx(expected.high))
    assert 0.0 <= low <= successes / n <= high <= 1.0
    assert high - low > 0  # never zero width, unlike the Wald interval at 0 and 1


def test_wilson_interval_refusals():
    with pytest.raises(ValueError, match="n >= 1"):
        wilson_interval(0.5, 0)
    with pytest.raises(ValueError, match="0 <= p <= 1"):
        wilson_interval(1.5, 3)


def test_macro_average_counts_each_suite_once():
    scores = {"aime": {"avg_at_k": 0.1}, "math500": {"avg_at_k": 0.5}, "gpqa": {"avg_at_k": 0.3}}
    domains = {"aime": "in_domain", "math500": "in_domain", "gpqa": "ood"}
    assert macro_average(scores, domains) == pytest.approx({"all": 0.3, "in_domain": 0.3, "ood": 0.3})
    assert macro_average({"aime": {"avg_at_k": 0.2}}, domains) == pytest.approx({"all": 0.2, "in_domain": 0.2})


def test_suite_plan_one_row_per_sample_grouped_by_sampling_settings():
    suites = {"aime": [{C.QUESTION_ID: "a1"}, {C.QUESTION_ID: "a2"}], "gpqa": [{C.QUESTION_ID: "g1"}],
              "math500": [{C.QUESTION_ID: "m1"}]}
    plan = suite_plan(suites, k=4, temperature=0.6, max_tokens=100,
                      settings={"gpqa": {"k": 1}, "math500": {"k": 1, "temperature": 0.0}})
    assert sorted(plan) == [(0.0, 100), (0.6, 100)]  # one engine pass per distinct setting
    shared = plan[(0.6, 100)]
    assert [(r[SUITE], r[C.QUESTION_ID], r[C.SAMPLE_INDEX]) for r in shared] == [
        ("aime", "a1", 0), ("aime", "a1", 1), ("aime", "a1", 2), ("aime", "a1", 3),
        ("aime", "a2", 0), ("aime", "a2", 1), ("aime", "a2", 2), ("aime", "a2", 3), ("gpqa", "g1", 0)]
    assert [(r[SUITE], r[C.SAMPLE_INDEX]) for r in plan[(0.0, 100)]] == [("math500", 0)]


def test_engine_passes_one_per_setting_with_a_k_per_question():
    suites = {"aime": [{C.QUESTION_ID: "a1"}, {C.QUESTION_ID: "a2"}], "gpqa": [{C.QUESTION_ID: "g1"}]}
    plan = suite_plan(suites, k=4, temperature=0.6, max_tokens=100, settings={"gpqa": {"k": 1}})[(0.6, 100)]
    (rows, k), = engine_passes(plan, per_question_k=True)  # suites with their own k: one engine start
    assert [(r[SUITE], r[C.QUESTION_ID]) for r in rows] == [("aime", "a1"), ("aime", "a2"), ("gpqa", "g1")]
    assert k == {"a1": 4, "a2": 4, "g1": 1} and all(C.SAMPLE_INDEX not in r for r in rows)
    # without a store (no k per question), and when one question id is asked with two k: a pass per k
    assert sorted(k for _, k in engine_passes(plan, per_question_k=False)) == [1, 4]
    clash = suite_plan({"a": [{C.QUESTION_ID: "q"}], "b": [{C.QUESTION_ID: "q"}]}, k=2, temperature=0.6,
                       max_tokens=100, settings={"b": {"k": 1}})[(0.6, 100)]
    assert sorted(k for _, k in engine_passes(clash, per_question_k=True)) == [1, 2]


def test_multiple_choice_rows_are_graded_by_letter():
    df = pd.DataFrame({
        C.COMPLETION: ["<think>x</think>\\boxed{B}", "<think>x</think>The answer is (C).", "<think>x</think>\\boxed{B}",
                       "<think>x</think>\\boxed{42}", "<think>x</think>\\boxed{4}"],
        C.ANSWER: ["B", "C", "A", "B", "4"],
        C.ANSWER_FORMAT: ["choice", "choice", "choice", "choice", ""],  # the last: a math row, math-verify
    })
    g = grade_samples(df)
    assert g[C.CORRECT].tolist() == [True, True, False, False, True]
    assert g[C.PREDICTED].tolist() == ["B", "C", "B", "", "4"]
    assert g[C.REASON].tolist() == ["", "", "wrong_answer", "no_option_letter", ""]
