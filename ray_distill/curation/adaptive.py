"""Adaptive teacher sampling (pure): decide, after each round, which questions need more samples.

    status = round_status(graded_so_far, active_ids, round_index=1, plan=plan)
    status["q17"]   # "continue" | "enough" | "hopeless" | "saturated" | "exhausted" | "token_cap"

A kept question is sampled in rounds; sample indices continue where the last round stopped, so the
generation store only adds what is new. Round 1 asks for P samples; each later round asks a question
for what it still misses (P minus its distinct correct trajectories), or for a fixed
``plan.round_size`` more when one is set. A question stops as soon as

- ``enough``: it has ``plan.target`` distinct verified-correct trajectories (the selection step keeps
  P of them, and exact duplicates never count twice);
- ``hopeless``: no correct sample after ``plan.hopeless_after_rounds`` rounds;
- ``saturated``: a round of at least P new samples added no new distinct correct trajectory although
  some exist (the teacher keeps repeating itself; more samples would not add diversity) — only with
  ``plan.stop_when_saturated``;
- ``exhausted``: it reached ``plan.max_samples`` (M);
- ``token_cap``: its teacher completion tokens reached ``plan.max_tokens_per_question``.

Every stop is recorded with its reason by the caller (rejects file for ``hopeless``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ray_distill import columns as C

CONTINUE, ENOUGH, HOPELESS, SATURATED, EXHAUSTED, TOKEN_CAP, JOB_BUDGET = (
    "continue", "enough", "hopeless", "saturated", "exhausted", "token_cap", "job_budget")


@dataclass(frozen=True)
class SamplingPlan:
    target: int  # P: distinct correct trajectories wanted per question
    max_samples: int  # M: samples per question at most
    round_size: int | None = None  # samples added per round; None: what the question still misses
    hopeless_after_rounds: int | None = 2
    stop_when_saturated: bool = True
    max_tokens_per_question: int | None = None

    def __post_init__(self) -> None:
        if min(self.target, self.max_samples, self.round_size or 1) < 1:
            raise ValueError(f"sampling plan needs positive target, max_samples and round_size: {self}")

    def first_round(self) -> int:
        """Samples per question in round 1."""
        return min(self.max_samples, self.round_size or self.target)

    def next_total(self, have_distinct: int, sampled: int) -> int:
        """Samples a still-active question will have after its next round."""
        more = self.round_size or max(1, self.target - have_distinct)
        return min(self.max_samples, sampled + more)


def ok_mask(df: pd.DataFrame) -> pd.Series:
    """Verified-correct rows: format check passed and the answer (or tests) right."""
    return df[C.FORMAT_OK].astype(bool) & df[C.CORRECT].astype(bool)


def distinct_correct(graded: pd.DataFrame) -> pd.Series:
    """Per question id: the number of distinct verified-correct completion texts."""
    ok = graded[ok_mask(graded)]
    return ok.groupby(ok[C.QUESTION_ID].astype(str))[C.COMPLETION].nunique()


def round_status(graded: pd.DataFrame, active: list[str], round_index: int, plan: SamplingPlan,
                 previous_distinct: pd.Series | None = None,
                 previous_sampled: pd.Series | None = None) -> dict[str, str]:
    """The decision for every question id in ``active`` after round ``round_index`` (1-based).

    ``graded`` holds every graded sample so far (all rounds); ``previous_distinct`` and
    ``previous_sampled`` are :func:`distinct_correct` and the samples per question after the round
    before (for the saturation rule).
    """
    distinct = distinct_correct(graded)
    by_q = graded.groupby(graded[C.QUESTION_ID].astype(str))
    tokens, sampled = by_q[C.NUM_TOKENS].sum(), by_q.size()
    out: dict[str, str] = {}
    for qid in active:
        have = int(distinct.get(qid, 0))
        before = int(previous_distinct.get(qid, 0)) if previous_distinct is not None else 0
        added = int(sampled.get(qid, 0)) - (int(previous_sampled.get(qid, 0)) if previous_sampled is not None else 0)
        if have >= plan.target:
            out[qid] = ENOUGH
        elif have == 0 and plan.hopeless_after_rounds is not None and round_index >= plan.hopeless_after_rounds:
            out[qid] = HOPELESS
        elif int(sampled.get(qid, 0)) >= plan.max_samples:
            out[qid] = EXHAUSTED
        elif plan.max_tokens_per_question is not None and int(tokens.get(qid, 0)) >= plan.max_tokens_per_question:
            out[qid] = TOKEN_CAP
        elif plan.stop_when_saturated and round_index > 1 and 0 < have == before and added >= plan.target:
            out[qid] = SATURATED
        else:
            out[qid] = CONTINUE
    return out


def merge_round(graded: pd.DataFrame, gen: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a round's samples ``gen`` (samples ``0..n-1`` of each active question, from the store)
    against the samples graded so far: returns ``(graded without the failed samples that ``gen``
    retried, the rows of gen to grade)`` -- new sample indices and retries of failed requests, never a
    sample already graded successfully (pure)."""
    if graded.empty:
        return graded, gen
    key = [C.QUESTION_ID, C.SAMPLE_INDEX]
    before = pd.MultiIndex.from_frame(graded[key])
    now = pd.MultiIndex.from_frame(gen[key])
    ok_before = (graded[C.ERROR].fillna("") == "").to_numpy()
    retried = ~ok_before & before.isin(now)
    return graded[~retried], gen[~now.isin(before[ok_before])]
