"""Diverse trajectory selection (pure): per question, keep the P correct trajectories that are farthest
apart by token-level Levenshtein distance (greedy max-min / farthest-point selection).

    picked = farthest_point(token_seqs, p=4, seed=0)      # indices into token_seqs
    selected = select_diverse(group_df, p=4, seed=0, tokenize=lambda t: tok(t)["input_ids"])

Distances come from ``rapidfuzz.distance.Levenshtein.distance`` on token-id lists (bit-parallel,
C++). Greedy selection needs about ``n * (p - 1)`` distances per question, not all ``n^2 / 2`` pairs.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from rapidfuzz.distance import Levenshtein

from ray_distill import columns as C

logger = logging.getLogger(__name__)

Tokenize = Callable[[str], Sequence[int]]
STAGE = "selection"
R_NOT_SELECTED = "not_selected"  # correct, but closer to the kept trajectories than those kept
REQUIRED_COLUMNS = [C.COMPLETION, C.CORRECT, C.FORMAT_OK, C.TEACHER, C.SAMPLE_INDEX]


def distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Token-level Levenshtein (edit) distance."""
    return Levenshtein.distance(a, b)


def farthest_point(seqs: Sequence[Sequence[int]], p: int, seed: int) -> list[int]:
    """Indices of ``p`` sequences chosen greedily: a seeded random start, then repeatedly the sequence
    whose distance to the nearest chosen one is largest (ties: lowest index). Returned in selection
    order; with ``len(seqs) <= p`` all indices are returned in order."""
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    n = len(seqs)
    if n <= p:
        return list(range(n))
    chosen = [random.Random(seed).randrange(n)]
    nearest = [float("inf")] * n  # distance of each sequence to its nearest chosen one
    while len(chosen) < p:
        last = chosen[-1]
        for i in range(n):
            if i not in chosen:
                nearest[i] = min(nearest[i], distance(seqs[last], seqs[i]))
        candidates = [i for i in range(n) if i not in chosen]
        chosen.append(max(candidates, key=lambda i: (nearest[i], -i)))
    return chosen


def question_seed(seed: int, question_id: str) -> int:
    """The seed of one question's random start: ``seed`` mixed with the question id, so questions with
    the same number of candidates do not all start at the same index (stable across processes)."""
    digest = hashlib.sha256(f"{seed}:{question_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def min_distances(seqs: Sequence[Sequence[int]]) -> list[float]:
    """For each sequence, the distance to the nearest other one (NaN when there is only one)."""
    out = [float("inf")] * len(seqs)
    for i, j in combinations(range(len(seqs)), 2):
        d = distance(seqs[i], seqs[j])
        out[i], out[j] = min(out[i], d), min(out[j], d)
    return [float("nan") if np.isinf(d) else float(d) for d in out]


POOL_MEAN_DISTANCE = "pool_mean_distance"  # per question: mean pairwise distance of all distinct correct rows
SELECTED_MEAN_DISTANCE = "selected_mean_distance"  # per question: ... of the selected rows


def mean_pairwise_distance(seqs: Sequence[Sequence[int]]) -> float:
    """Mean Levenshtein distance over all pairs (NaN for fewer than two sequences)."""
    pairs = [distance(a, b) for a, b in combinations(seqs, 2)]
    return float(np.mean(pairs)) if pairs else float("nan")


def select_diverse(group: pd.DataFrame, p: int, seed: int, tokenize: Tokenize, pool_stats: bool = True) -> pd.DataFrame:
    """Among the rows of one question that are ``correct`` and ``format_ok``, keep the ``p`` farthest
    apart; add ``selection_distance`` (min distance to the other selected rows, NaN if alone) and, with
    ``pool_stats``, the mean pairwise distances of the selected rows and of all distinct correct ones
    (the latter costs all n(n-1)/2 distances, against about n(p-1) for the selection itself).

    The random start of farthest-P is seeded per question (:func:`question_seed` of ``seed`` and the
    question id, when the rows carry one). Rows are ordered by (teacher, sample_index) first, so the
    result does not depend on the order in which a shuffle delivered them. Duplicated (teacher,
    sample_index) rows are refused; exact duplicate texts count once (so fewer than ``p`` rows come back when fewer distinct ones exist).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in group.columns]
    if missing:
        raise ValueError(f"select_diverse: missing columns {missing} (has {list(group.columns)})")
    if group.duplicated([C.TEACHER, C.SAMPLE_INDEX]).any():
        raise ValueError("select_diverse: duplicated (teacher, sample_index) rows in one group")
    good = group[group[C.CORRECT].astype(bool) & group[C.FORMAT_OK].astype(bool)]
    good = good.sort_values([C.TEACHER, C.SAMPLE_INDEX], kind="stable")
    # Identical trajectories add no diversity: keep the first of each text before selecting.
    good = good.drop_duplicates(subset=[C.COMPLETION], keep="first").reset_index(drop=True)
    seqs = [list(tokenize(text)) for text in good[C.COMPLETION]]
    ids = good[C.QUESTION_ID].astype(str).unique() if C.QUESTION_ID in good.columns else []
    if len(ids) > 1:
        raise ValueError(f"select_diverse: one question per group, got {len(ids)}")
    start_seed = question_seed(seed, ids[0]) if len(ids) else seed
    picked = farthest_point(seqs, p, start_seed) if seqs else []
    out = good.iloc[picked].copy()
    out[C.SELECTION_DISTANCE] = min_distances([seqs[i] for i in picked]) if picked else pd.Series(dtype=float)
    if pool_stats:  # what selection bought: mean distance of the kept trajectories vs all distinct correct ones
        out[POOL_MEAN_DISTANCE] = mean_pairwise_distance(seqs) if picked else pd.Series(dtype=float)
        out[SELECTED_MEAN_DISTANCE] = mean_pairwise_distance([seqs[i] for i in picked]) if picked else pd.Series(dtype=float)
    return out.reset_index(drop=True)


def select_questions(df: pd.DataFrame, p: int, seed: int, tokenize: Tokenize, pool_stats: bool = True) -> pd.DataFrame:
    """:func:`select_diverse` on every question of ``df`` (in question-id order), concatenated."""
    parts = [select_diverse(g, p, seed, tokenize, pool_stats) for _, g in df.groupby(C.QUESTION_ID, sort=True)]
    if not parts:
        stats = [POOL_MEAN_DISTANCE, SELECTED_MEAN_DISTANCE] if pool_stats else []
        return df.head(0).assign(**{c: pd.Series(dtype=float) for c in [C.SELECTION_DISTANCE, *stats]})
    return pd.concat(parts, ignore_index=True)


def distance_report(selected: pd.DataFrame) -> dict[str, float]:
    """Mean over questions (with two or more trajectories) of the mean pairwise distance of the
    selected trajectories and of all distinct correct ones (``select_diverse``'s columns)."""
    per_q = selected.drop_duplicates(C.QUESTION_ID)[[POOL_MEAN_DISTANCE, SELECTED_MEAN_DISTANCE]].astype(float)
    per_q = per_q.dropna()
    return {"mean_distance_selected": float(per_q[SELECTED_MEAN_DISTANCE].mean()) if len(per_q) else float("nan"),
            "mean_distance_all_correct": float(per_q[POOL_MEAN_DISTANCE].mean()) if len(per_q) else float("nan"),
            "questions_with_choice": int(len(per_q))}


def distance_table(selected: pd.DataFrame) -> pd.DataFrame:
    """Per question: trajectories kept, the mean pairwise distance of the kept ones and of all distinct
    correct ones (what farthest-P had to choose from), from ``select_diverse``'s columns."""
    cols = [POOL_MEAN_DISTANCE, SELECTED_MEAN_DISTANCE]
    if selected.empty or not set(cols) <= set(selected.columns):
        return pd.DataFrame(columns=[C.QUESTION_ID, "kept", *cols])
    g = selected.groupby(selected[C.QUESTION_ID].astype(str), sort=True)
    out = g[cols].first().astype(float)
    out.insert(0, "kept", g.size())
    return out.reset_index()


def selection_rejects(group: pd.DataFrame, selected: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``group`` that ``select_diverse`` did not keep, with ``stage="selection"`` and a
    ``reason``: the grader's reason for rejected rows, ``"not_selected"`` for correct ones left out."""
    keys = [C.TEACHER, C.SAMPLE_INDEX]
    kept = set(map(tuple, selected[keys].itertuples(index=False, name=None)))
    mask = [k not in kept for k in group[keys].itertuples(index=False, name=None)]
    out = group[mask].copy()
    graded_ok = out[C.CORRECT].astype(bool) & out[C.FORMAT_OK].astype(bool)
    grader_reason = out[C.REASON].astype(str) if C.REASON in out.columns else pd.Series("", index=out.index)
    out[C.REASON] = np.where(graded_ok, R_NOT_SELECTED, grader_reason.where(grader_reason != "", "rejected_by_grader"))
    out[C.STAGE] = STAGE
    return out.reset_index(drop=True)


def char_tokenize(text: str) -> list[int]:
    """Fallback tokenizer: Unicode code points (character-level distance)."""
    return [ord(ch) for ch in text]
