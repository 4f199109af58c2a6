"""Farthest-point selection on hand-made sequences whose answer is known."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from ray_distill import columns as C
from ray_distill.curation.selection import (
    distance_report,
    distance_table,
    farthest_point,
    mean_pairwise_distance,
    min_distances,
    question_seed,
    select_diverse,
    select_questions,
    selection_rejects,
)

SAME = [1, 2, 3, 4, 5, 6]
FAR = [9, 9, 9, 9, 9, 9, 9, 9]


@pytest.mark.parametrize("seed", range(6))
def test_far_one_is_picked(seed):
    seqs = [SAME, SAME, FAR, SAME]
    assert 2 in farthest_point(seqs, p=2, seed=seed)


def test_greedy_max_min_order():
    # points on a line (lengths of a repeated token, so the distance is the length difference): from every start
    # the greedy max-min order, worked out by hand (ties to the lowest index), e.g. from 0: the farthest (20), then
    # 10 (10 away from both) over 11 (9 from 20); from 1: 20, then 10 and 11 tie at 9 -> 10
    seqs = [[7] * n for n in (0, 1, 2, 10, 11, 20)]
    expected = {0: [0, 5, 3], 1: [1, 5, 3], 2: [2, 5, 4], 3: [3, 0, 5], 4: [4, 0, 5], 5: [5, 0, 3]}
    starts = set()
    for seed in range(30):
        picked = farthest_point(seqs, p=3, seed=seed)
        assert picked == expected[picked[0]], (seed, picked)
        starts.add(picked[0])
    assert starts == set(expected)  # every start was checked, not only the one a seed happens to draw


def test_deterministic_and_seed_dependent():
    seqs = [[i % 7, i % 3, i] * (i + 1) for i in range(12)]
    runs = {tuple(farthest_point(seqs, p=4, seed=s)) for s in range(5)}
    assert all(farthest_point(seqs, 4, s) == farthest_point(seqs, 4, s) for s in range(5))
    assert len({r[0] for r in runs}) > 1  # the seed picks the start


def test_ties_go_to_lowest_index():
    seqs = [[1], [1], [1], [1]]
    for seed in range(5):
        picked = farthest_point(seqs, p=3, seed=seed)
        assert picked[1:] == [i for i in range(4) if i != picked[0]][:2]


def test_p_at_least_n_returns_all():
    assert farthest_point([[1], [2]], p=2, seed=0) == [0, 1]
    assert farthest_point([[1], [2]], p=5, seed=0) == [0, 1]
    assert farthest_point([], p=3, seed=0) == []
    with pytest.raises(ValueError):
        farthest_point([[1]], p=0, seed=0)


def test_distances():
    assert mean_pairwise_distance([[1, 2], [1, 3], [4, 5]]) == pytest.approx((1 + 2 + 2) / 3)
    assert math.isnan(mean_pairwise_distance([[1]]))
    assert min_distances([[1, 2], [1, 3], [4, 5, 6]]) == [1.0, 1.0, 3.0]


def _group(completions: list[str], correct: list[bool]) -> pd.DataFrame:
    n = len(completions)
    return pd.DataFrame({
        C.QUESTION_ID: ["q"] * n, C.TEACHER: ["t"] * n, C.SAMPLE_INDEX: list(range(n)),
        C.COMPLETION: completions, C.CORRECT: correct, C.FORMAT_OK: [True] * n,
        C.REASON: ["" if c else "wrong_answer" for c in correct],
    })


def test_select_diverse_keeps_correct_only_and_is_order_independent():
    group = _group(["aaaa", "aaab", "zzzzzzzz", "qqqqqqqqqqqqqqq", "aaaa"], [True, True, True, False, True])
    tokenize = lambda t: [ord(c) for c in t]  # noqa: E731
    out = select_diverse(group, p=2, seed=0, tokenize=tokenize)
    assert len(out) == 2 and out[C.CORRECT].all() and 2 in out[C.SAMPLE_INDEX].tolist()
    assert (out[C.SELECTION_DISTANCE] > 0).all()
    shuffled = select_diverse(group.sample(frac=1.0, random_state=1), p=2, seed=0, tokenize=tokenize)
    assert shuffled[C.SAMPLE_INDEX].tolist() == out[C.SAMPLE_INDEX].tolist()
    rejects = selection_rejects(group, out)
    assert len(rejects) + len(out) == len(group)
    assert dict(zip(rejects[C.SAMPLE_INDEX], rejects[C.REASON]))[3] == "wrong_answer"
    assert set(rejects[C.REASON]) <= {"wrong_answer", "not_selected"} and (rejects[C.STAGE] == "selection").all()


def test_select_diverse_edge_cases():
    tokenize = lambda t: [ord(c) for c in t]  # noqa: E731
    none = select_diverse(_group(["a", "b"], [False, False]), p=2, seed=0, tokenize=tokenize)
    assert none.empty and C.SELECTION_DISTANCE in none.columns
    one = select_diverse(_group(["a", "b"], [True, False]), p=2, seed=0, tokenize=tokenize)
    assert len(one) == 1 and math.isnan(one[C.SELECTION_DISTANCE].iloc[0])
    with pytest.raises(ValueError, match="duplicated"):
        select_diverse(pd.concat([_group(["a"], [True])] * 2), p=1, seed=0, tokenize=tokenize)


def test_select_diverse_counts_identical_texts_once():
    group = _group(["abc", "abc", "abc", "abd"], [True] * 4)
    out = select_diverse(group, p=3, seed=0, tokenize=lambda t: [ord(c) for c in t])
    assert sorted(out[C.COMPLETION]) == ["abc", "abd"]
    assert out[C.SAMPLE_INDEX].tolist().count(0) + out[C.SAMPLE_INDEX].tolist().count(3) == 2


def test_distance_report_compares_selected_with_all_correct():
    rows = [{C.QUESTION_ID: "q", C.TEACHER: "t", C.SAMPLE_INDEX: i, C.COMPLETION: text, C.CORRECT: True,
             C.FORMAT_OK: True} for i, text in enumerate(["aaaa", "aaab", "zzzz"])]
    selected = select_diverse(pd.DataFrame(rows), p=2, seed=0, tokenize=lambda s: [ord(c) for c in s])
    report = distance_report(selected)
    # all correct: pairs (1, 4, 4) -> 3.0; the two farthest apart are 4 apart
    assert report == {"mean_distance_selected": 4.0, "mean_distance_all_correct": 3.0, "questions_with_choice": 1}


def test_random_start_is_seeded_per_question():
    # 12 questions with the same 6 candidates each: one shared seed must not start them all at one index
    texts = ["a" * n for n in (1, 3, 6, 10, 15, 21)]
    rows = [{C.QUESTION_ID: f"q{q}", C.TEACHER: "t", C.SAMPLE_INDEX: i, C.COMPLETION: text, C.CORRECT: True,
             C.FORMAT_OK: True} for q in range(12) for i, text in enumerate(texts)]
    out = select_questions(pd.DataFrame(rows), p=1, seed=0, tokenize=lambda s: [ord(c) for c in s])
    starts = dict(zip(out[C.QUESTION_ID], out[C.SAMPLE_INDEX]))
    assert len(starts) == 12 and len(set(starts.values())) > 1
    assert question_seed(0, "q1") != question_seed(0, "q2") and question_seed(0, "q1") != question_seed(1, "q1")
    again = select_questions(pd.DataFrame(rows).iloc[::-1], p=1, seed=0, tokenize=lambda s: [ord(c) for c in s])
    assert dict(zip(again[C.QUESTION_ID], again[C.SAMPLE_INDEX])) == starts  # reproducible, order-free
    with pytest.raises(ValueError, match="one question per group"):
        select_diverse(pd.DataFrame(rows[4:8]), p=1, seed=0, tokenize=list)


def test_distance_table_per_question():
    rows = [{C.QUESTION_ID: q, C.TEACHER: "t", C.SAMPLE_INDEX: i, C.COMPLETION: text, C.CORRECT: True,
             C.FORMAT_OK: True} for q, texts in (("a", ["aaaa", "aaab", "zzzz"]), ("b", ["x"]))
            for i, text in enumerate(texts)]
    selected = select_questions(pd.DataFrame(rows), p=2, seed=0, tokenize=lambda s: [ord(c) for c in s])
    table = distance_table(selected)
    assert table[C.QUESTION_ID].tolist() == ["a", "b"] and table["kept"].tolist() == [2, 1]
    assert table["selected_mean_distance"].iloc[0] == 4.0 and table["pool_mean_distance"].iloc[0] == 3.0
    assert math.isnan(table["pool_mean_distance"].iloc[1])
