"""Adaptive teacher sampling (pure): decide, after each round, which questions need more samples.

    status = round_status(graded_so_far, active_ids, round_index=1, plan=plan)
    status["q17"]   # "continue" | "enough" | "hopeless" | "saturated" | "exhausted" | "token_cap"

A kept question is sampled in rounds; sample indices continue where the last round stopped, so the
generation store only adds what is new. Round 1 asks for the floor ``plan.floor`` (``min_samples``,
by default 2P, at most M) at once; each later round asks for ``plan.round_size`` more (default P). A
question stops as soon as

- ``enough``: it has ``plan.enough`` (P + ``plan.margin``, default P + 2) distinct verified-correct
  trajectories among at least ``plan.floor`` samples -- so farthest-P selection has more than P correct
  candidates to pick the far-apart ones from (stopping at exactly P distinct correct ones left it nothing to
  choose, and did so for exactly the questions the teacher solves easily, which would offer the most choice);
  a question that cannot reach P + margin within M stops at M (``exhausted``) with what it has;
- ``hopeless``: no correct sample after ``plan.hopeless_after_rounds`` rounds;
- ``saturated``: a round of at least P new samples added no new distinct correct trajectory although
  some exist (the teacher keeps repeating itself; more samples would not add diversity) -- only with
  ``plan.stop_when_saturated``. Later rounds add P samples by default, so the rule can fire; it
  never could while a round only asked for the P minus distinct-correct samples still missing;
- ``exhausted``: it reached ``plan.max_samples`` (M), or (:func:`replay`) the store holds no more;
- ``token_cap``: its teacher completion tokens reached ``plan.max_tokens_per_question``.

Every stop is recorded with its reason by the caller (rejects file for ``hopeless``).
:func:`replay` runs the same rounds over samples already generated and graded (the data-budget
search replays a job's adaptive sampling on stored samples, so ``selection.adaptive.*`` can be searched).
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
    round_size: int | None = None  # samples added per later round; None: P
    hopeless_after_rounds: int | None = 2
    stop_when_saturated: bool = True
    max_tokens_per_question: int | None = None
    min_samples: int | None = None  # floor before "enough"; None: 2P (at most M)
    margin: int = 2  # "enough" needs P + margin distinct correct trajectories (more than P to choose from)

    def __post_init__(self) -> None:
        if min(self.target, self.max_samples, self.round_size or 1, self.min_samples or 1, self.margin) < 1:
            raise ValueError(f"sampling plan needs positive target, max_samples, round_size, min_samples, margin: "
                             f"{self}")

    @property
    def enough(self) -> int:
        """Distinct correct trajectories that stop a question as ``enough``: P + margin."""
        return self.target + self.margin

    @property
    def floor(self) -> int:
        """Samples a question has before it can stop as ``enough`` (never more than M)."""
        return min(self.max_samples, self.min_samples or 2 * self.target)

    @property
    def step(self) -> int:
        """Samples a later round adds (also the evidence the saturation rule needs)."""
        return self.round_size or self.target

    def first_round(self) -> int:
        """Samples per question in round 1: the floor at once (one engine start for the bulk)."""
        return max(self.floor, min(self.max_samples, self.step))

    def next_total(self, have_distinct: int, sampled: int) -> int:
        """Samples a still-active question will have after its next round: up to the floor when it
        already has P + margin distinct correct ones (only the floor is missing), else ``step`` more (at least
        the floor); never past M."""
        if have_distinct >= self.enough:
            return max(sampled, self.floor)
        return min(self.max_samples, max(self.floor, sampled + self.step))


def plan_from_config(cfg) -> SamplingPlan:
    """The plan of a job (``JobConfig``): P, M, ``selection.adaptive.*`` and the per-question token cap."""
    s, a = cfg.selection, cfg.selection.adaptive
    return SamplingPlan(
        target=s.keep_per_question, max_samples=s.samples_per_question,
        round_size=a.round_size, hopeless_after_rounds=a.hopeless_after_rounds,
        stop_when_saturated=a.stop_when_saturated, max_tokens_per_question=cfg.budget.max_teacher_tokens_per_question,
        min_samples=a.min_samples, margin=a.enough_margin,
    )


def ok_mask(df: pd.DataFrame) -> pd.Series:
    """Verified-correct rows: format check passed and the answer (or tests) right."""
    return df[C.FORMAT_OK].astype(bool) & df[C.CORRECT].astype(bool)


def distinct_correct(graded: pd.DataFrame) -> pd.Series:
    """Per question id: the number of distinct verified-correct completion texts."""
    ok = graded[ok_mask(graded)]
    return ok.groupby(ok[C.QUESTION_ID].astype(str))[C.COMPLETION].nunique()


SAMPLED, TOKENS, DISTINCT = "sampled", "tokens", "distinct"  # question_stats' columns


def question_stats(graded: pd.DataFrame) -> pd.DataFrame:
    """Per question id (str): ``sampled`` (graded samples), ``tokens`` (their completion tokens) and
    ``distinct`` (:func:`distinct_correct`) -- all a round's decision reads of the samples."""
    qid = graded[C.QUESTION_ID].astype(str)
    by_q = graded.groupby(qid)
    out = pd.DataFrame({SAMPLED: by_q.size(), TOKENS: by_q[C.NUM_TOKENS].sum()})
    out[DISTINCT] = distinct_correct(graded).reindex(out.index).fillna(0)
    return out.astype("int64")


def round_status(graded: pd.DataFrame, active: list[str], round_index: int, plan: SamplingPlan,
                 previous_distinct: pd.Series | None = None,
                 previous_sampled: pd.Series | None = None) -> dict[str, str]:
    """The decision for every question id in ``active`` after round ``round_index`` (1-based).

    ``graded`` holds every graded sample so far (all rounds); ``previous_distinct`` and
    ``previous_sampled`` are :func:`distinct_correct` and the samples per question after the round
    before (for the saturation rule).
    """
    return status_from_stats(question_stats(graded), active, round_index, plan, previous_distinct, previous_sampled)


def status_from_stats(stats: pd.DataFrame, active: list[str], round_index: int, plan: SamplingPlan,
                      previous_distinct: pd.Series | None = None,
                      previous_sampled: pd.Series | None = None) -> dict[str, str]:
    """:func:`round_status` from :func:`question_stats` of the samples so far (what the streaming plane's
    driver holds of them: three counters per question)."""
    distinct, tokens, sampled = stats[DISTINCT], stats[TOKENS], stats[SAMPLED]
    out: dict[str, str] = {}
    for qid in active:
        before = int(previous_distinct.get(qid, 0)) if previous_distinct is not None else 0
        added = int(sampled.get(qid, 0)) - (int(previous_sampled.get(qid, 0)) if previous_sampled is not None else 0)
        out[qid] = question_status(int(distinct.get(qid, 0)), int(sampled.get(qid, 0)), int(tokens.get(qid, 0)),
                                   before, added, round_index, plan)
    return out


def question_status(have: int, sampled: int, tokens: int, before: int, added: int, round_index: int,
                    plan: SamplingPlan) -> str:
    """One question's decision after its round ``round_index``: ``have`` distinct correct trajectories among
    ``sampled`` samples of ``tokens`` completion tokens; ``before`` distinct correct ones and ``added`` samples
    more than after its previous round (the saturation rule)."""
    if have >= plan.enough and sampled >= plan.floor:
        return ENOUGH
    if have == 0 and plan.hopeless_after_rounds is not None and round_index >= plan.hopeless_after_rounds:
        return HOPELESS
    if sampled >= plan.max_samples:
        return EXHAUSTED
    if plan.max_tokens_per_question is not None and tokens >= plan.max_tokens_per_question:
        return TOKEN_CAP
    if plan.stop_when_saturated and round_index > 1 and 0 < have == before and added >= plan.step:
        return SATURATED
    return CONTINUE


def latest_samples(graded: pd.DataFrame) -> pd.DataFrame:
    """One row per (question, teacher, sample index) of graded rows that may hold a sample twice (a failed
    request graded in one round, its retry in a later one): the successful row where there is one (pure)."""
    failed = graded[C.ERROR].fillna("").astype(str) != ""
    keys = [C.QUESTION_ID, C.TEACHER, C.SAMPLE_INDEX]
    ordered = graded.assign(_failed=failed.to_numpy()).sort_values("_failed", kind="stable")
    return ordered.drop_duplicates(keys).drop(columns="_failed").sort_index()


def replay(graded: pd.DataFrame, question_ids: list[str], plan: SamplingPlan) -> tuple[pd.DataFrame, dict[str, str]]:
    """The rounds of adaptive sampling run over samples generated and graded before (``graded``: any
    number of samples per question, sample indices from 0): returns the samples the rounds would have
    drawn (every sample below each question's final count) and each question's stop reason. What
    live sampling does with the same samples, minus the job-wide token budget (a live-only rule); a
    question whose next round finds no further sample stops as ``exhausted``."""
    idx = graded[C.SAMPLE_INDEX].astype(int)
    qid = graded[C.QUESTION_ID].astype(str)
    held = graded.groupby(qid).size()
    want = {q: plan.first_round() for q in dict.fromkeys(str(q) for q in question_ids)}
    have_n: dict[str, int] = {}
    final: dict[str, str] = {}
    previous, sampled, round_index = None, None, 0
    while want:
        round_index += 1
        limit = qid.map(lambda q: want.get(q, have_n.get(q, 0)))
        drawn = graded[(idx < limit) & qid.isin(set(want) | set(have_n))]
        status = round_status(drawn, list(want), round_index, plan, previous, sampled)
        now = drawn.groupby(drawn[C.QUESTION_ID].astype(str)).size()
        for q in want:
            have_n[q] = int(now.get(q, 0))
        previous, sampled = distinct_correct(drawn), now
        final.update({q: s for q, s in status.items() if s != CONTINUE})
        nxt = {}
        for q, s in status.items():
            if s != CONTINUE:
                continue
            if have_n[q] >= int(held.get(q, 0)):  # the store holds no further sample of it
                final[q] = EXHAUSTED
            else:
                nxt[q] = plan.next_total(int(previous.get(q, 0)), have_n[q])
        want = nxt
    limit = qid.map(lambda q: have_n.get(q, 0))
    return graded[idx < limit], final
