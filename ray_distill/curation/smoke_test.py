"""Teacher selection by smoke test (pure): a fair race between candidate teachers, judged by how well a
student fine-tuned on each teacher's probe corpus scores on the dev suite, not by the teacher's own accuracy.

    picks = training_questions({"qwq": ["q1", "q2", "q3"], "r1": ["q2", "q3"]}, seed=0)
    # {"qwq": ["q2", "q3"], "r1": ["q2", "q3"]}: the same number of rows each, shared questions first
    ranking = rank_teachers([
        {"teacher": "qwq", "student_score": 0.41, "ci_low": 0.35, "ci_high": 0.47, "teacher_accuracy": 0.80, ...},
        {"teacher": "r1",  "student_score": 0.37, "ci_low": 0.31, "ci_high": 0.43, "teacher_accuracy": 0.86, ...},
    ], per_question={"qwq": {...}, "r1": {...}})
    winner(ranking)          # "qwq"
    top_two_note(ranking)    # "top two cannot be separated at 95%: qwq - r1 = +0.040 [-0.012, +0.092] ..."

- :func:`training_questions`: every candidate is fine-tuned on the same number of rows — the smallest
  verified count among the candidates at or above the floor (:func:`verified_floor`, ``smoke_test.min_verified``)
  — taking first the questions every one of them verified, then a seeded choice of its own (the same seeded
  order for every teacher, so the picks overlap where they can). A candidate below the floor is not trained:
  it ranks last with its reason, instead of shrinking every other candidate's training set to its few rows.
- :func:`rank_teachers`: one kind of score per ranking (``ranked_by``): ``student_score`` (the smoke
  test) or, with the smoke test off, ``teacher_accuracy``, said so in the table. A teacher without a
  verified probe row has nothing to train on: it gets no score and ranks last with its ``reason``.
  Ties go to the lower corpus entropy (the paper's diagnostic), then the name; a missing entropy sorts
  after any known one. Each scored row but the last carries a paired comparison with the next one
  (``margin`` and its 95% CI over the same questions, ``separable``): a t interval over the per-question
  differences whose variance includes a weak prior (:func:`margin_ci`), so it never has zero width (a single
  shared question, or identical differences, are not certainty); ``separable`` also needs at least
  :data:`MIN_SHARED_QUESTIONS` shared questions.

The CIs are over questions, for the students as trained: they leave out the training seed's noise,
which at small scale can be as large (the quickstart at 400 probe questions: the winner changed with
``train.seed``). "Cannot be separated" is a reason to enlarge the probe or the dev suite; "separable"
is not proof against a different seed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from statistics import NormalDist, mean, stdev

from ray_distill.data.dev import seeded_order

logger = logging.getLogger(__name__)

STUDENT_SCORE = "student_score"  # the smoke test: the student's avg@k on the dev suite after the short SFT
TEACHER_ACCURACY = "teacher_accuracy"  # smoke test off: the teacher's own accuracy on the probe
RANKED_BY = (STUDENT_SCORE, TEACHER_ACCURACY)
NO_VERIFIED_ROWS = "no verified probe rows"
BELOW_FLOOR = "too few verified probe rows"
MIN_SHARED_QUESTIONS = 10  # fewer shared dev questions than this: never "separable"
PRIOR_SD = 0.5  # the margin interval's prior sd of a per-question difference (half its range), one degree of freedom
RESULT_KEYS = ("teacher", "student_score", "teacher_accuracy", "mean_length", "entropy")
Z_95 = NormalDist().inv_cdf(0.975)


def verified_floor(probe_questions: int, min_verified: float) -> int:
    """The fewest verified probe rows a candidate needs to be trained in the smoke test: ``min_verified`` is a
    share of the probe below 1 (rounded up), a count from 1 on; never less than 1."""
    n = math.ceil(min_verified * probe_questions) if min_verified < 1 else int(min_verified)
    return max(1, n)


def below_floor_reason(verified: int, floor: int) -> str:
    """The ranking's reason for a candidate with ``verified`` rows under ``floor`` ("" when it is not)."""
    if verified == 0:
        return NO_VERIFIED_ROWS
    return f"{BELOW_FLOOR}: {verified} < {floor}" if verified < floor else ""


def training_questions(verified: Mapping[str, Iterable[str]], seed: int, floor: int = 1) -> dict[str, list[str]]:
    """Per candidate with at least ``floor`` verified probe questions, the questions its smoke-test student
    trains on: ``n = min`` verified count over those candidates, the questions every one of them
    verified first, then its own others in :func:`seeded_order`. Candidates below the floor get none."""
    sets = {name: set(map(str, ids)) for name, ids in verified.items()}
    live = {name: s for name, s in sets.items() if s and len(s) >= floor}
    if not live:
        return {name: [] for name in sets}
    n = min(len(s) for s in live.values())
    shared = set.intersection(*live.values())
    out = {name: [] for name in sets}
    for name, own in live.items():
        out[name] = seeded_order(shared, seed) + seeded_order(own - shared, seed)[: n - len(shared)]
    return out


def mean_ci(values: Iterable[float]) -> tuple[float, float, float]:
    """(mean, low, high): a 95% normal-approximation CI of the mean (zero width for one value)."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan, math.nan
    m = mean(vals)
    half = Z_95 * stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else 0.0
    return m, m - half, m + half


def margin_ci(differences: Iterable[float]) -> tuple[float, float, float]:
    """(mean, low, high) of per-question score differences (each in [-1, 1]): a 95% t interval whose variance
    pools the sample's with a weak prior, one pseudo-degree of freedom at sd :data:`PRIOR_SD` (``(s0^2 +
    (n-1) s^2) / n`` with ``n`` degrees of freedom), clipped to [-1, 1]. The prior keeps the interval from ever
    having zero width (one shared question, or every difference equal, is not certainty: one question gives
    [-1, 1]) and weighs as one question among dozens. NaNs without a question."""
    from scipy.stats import t as student_t

    vals = [float(v) for v in differences]
    if not vals:
        return math.nan, math.nan, math.nan
    n = len(vals)
    m = mean(vals)
    variance = (PRIOR_SD ** 2 + (n - 1) * (stdev(vals) ** 2 if n > 1 else 0.0)) / n
    half = float(student_t.ppf(0.975, n)) * math.sqrt(variance / n)
    return m, max(-1.0, m - half), min(1.0, m + half)


def paired_margin(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[float, float, float, int]:
    """(mean of ``a[q] - b[q]``, its 95% CI low, high (:func:`margin_ci`), number of questions) over the
    questions both were scored on: a paired comparison, narrower than comparing two CIs when the questions'
    difficulty varies. NaNs when they share no question."""
    common = sorted(set(a) & set(b))
    m, lo, hi = margin_ci(a[q] - b[q] for q in common)
    return m, lo, hi, len(common)


def rank_teachers(results: list[dict], by: str = STUDENT_SCORE,
                  per_question: Mapping[str, Mapping[str, float]] | None = None) -> list[dict]:
    """Sorted copies of ``results`` with ``rank`` (1-based), ``ranked_by`` and, between consecutive
    scored rows, ``margin``/``margin_ci_low``/``margin_ci_high``/``separable`` from ``per_question``
    (teacher -> question -> score; None: NaN margins, ``separable`` None).

    A result needs ``RESULT_KEYS``. One with a ``reason`` (e.g. :data:`NO_VERIFIED_ROWS`) ranks after
    every scored one whatever its scores; one whose ``by`` score is missing (NaN/None) must have a reason."""
    if by not in RANKED_BY:
        raise ValueError(f"rank_teachers: by must be one of {RANKED_BY}, got {by!r}")
    if not results:
        raise ValueError("rank_teachers: no smoke-test results")
    for r in results:
        missing = [k for k in RESULT_KEYS if k not in r]
        if missing:
            raise ValueError(f"rank_teachers: result for {r.get('teacher', '?')!r} lacks {missing}")
        if _is_nan(r[by]) and not r.get("reason"):
            raise ValueError(f"rank_teachers: teacher {r['teacher']!r} has no {by} and no reason")
    names = [r["teacher"] for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"rank_teachers: duplicate teachers in {names}")
    ordered = sorted(results, key=lambda r: _sort_key(r, by))
    ranking = [{**r, "rank": i, "ranked_by": by, "margin": math.nan, "margin_ci_low": math.nan,
                "margin_ci_high": math.nan, "margin_questions": 0, "separable": None}
               for i, r in enumerate(ordered, start=1)]
    scored = [r for r in ranking if _scored(r, by)]
    for upper, lower in zip(scored, scored[1:]):
        if per_question is not None:
            m, lo, hi, n = paired_margin(per_question[upper["teacher"]], per_question[lower["teacher"]])
            upper.update(margin=m, margin_ci_low=lo, margin_ci_high=hi, margin_questions=n,
                         separable=bool(lo > 0 and n >= MIN_SHARED_QUESTIONS))
    logger.info("teacher ranking by %s: %s", by, [(r["teacher"], r[by], r.get("reason", "")) for r in ranking])
    return ranking


def winner(ranking: list[dict]) -> str:
    """The first-ranked teacher of a :func:`rank_teachers` ranking; an error when no candidate has a
    score (every one lacks verified probe rows: there is nothing to distil from)."""
    first = min(ranking, key=lambda r: r["rank"])
    if not _scored(first, first["ranked_by"]):
        reasons = "; ".join(f"{r['teacher']}: {r.get('reason', '')}" for r in ranking)
        raise ValueError(f"smoke test: no candidate teacher has a score ({reasons}); check the teachers and the grader")
    return first["teacher"]


def top_two_note(ranking: list[dict]) -> str:
    """One line on whether the winner is separable from the runner-up at 95% (paired over the questions)."""
    by = ranking[0]["ranked_by"]
    scored = sorted((r for r in ranking if _scored(r, by)), key=lambda r: r["rank"])
    if len(scored) < 2:
        return f"one scored candidate ({by}): no runner-up to separate from"
    first, second = scored[:2]
    if first["separable"] is None:
        return f"top two by {by}: no per-question scores to compare"
    verdict = "separable" if first["separable"] else "cannot be separated"
    n = first.get("margin_questions")
    few = f"; only {n} shared questions (< {MIN_SHARED_QUESTIONS})" if n is not None and n < MIN_SHARED_QUESTIONS else ""
    over = f"paired over the same {n} questions" if n is not None else "paired over the same questions"
    return (f"top two {verdict} at 95%: {first['teacher']} - {second['teacher']} = {first['margin']:+.3f} "
            f"[{first['margin_ci_low']:+.3f}, {first['margin_ci_high']:+.3f}] ({by}, {over}{few})")


def _scored(r: dict, by: str) -> bool:
    """A result takes part in the ranking by its score unless it has a reason not to (or no score)."""
    return not r.get("reason") and not _is_nan(r[by])


def _sort_key(r: dict, by: str) -> tuple:
    unscored = not _scored(r, by)
    entropy = r["entropy"]
    unknown = _is_nan(entropy)
    return (unscored, 0.0 if unscored else -float(r[by]), unknown, 0.0 if unknown else float(entropy), str(r["teacher"]))


def _is_nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
