"""Question compression (pure): the student's pass rate per question, and the keep band.

    rates = pass_rates(graded_student_samples)          # question_id, n, n_correct, pass_rate
    kept, rejected = compress(questions, rates, max_pass_rate=0.5)

A question the student already solves more often than ``max_pass_rate`` is "too_easy" and dropped
(paper: 830 -> 237). With ``min_pass_rate`` set, a question solved less often is "too_hard". The
band is inclusive: ``min_pass_rate <= pass_rate <= max_pass_rate`` is kept. A question without any
student sample is an error, never silently kept or dropped.

"Correct" is the grader's ``correct`` column (answer correctness, see ``curation.graders``). Samples
whose generation failed (non-empty ``error`` column, when present) are not counted.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ray_distill import columns as C

logger = logging.getLogger(__name__)

STAGE = "compression"
R_TOO_EASY = "too_easy"
R_TOO_HARD = "too_hard"
RATE_COLUMNS = [C.QUESTION_ID, C.NUM_SAMPLES, C.NUM_CORRECT, C.PASS_RATE]


def pass_rates(samples: pd.DataFrame) -> pd.DataFrame:
    """Per question: number of samples, number correct, pass rate (``RATE_COLUMNS``).

    A sample whose generation failed counts as wrong, as in evaluation: the student did not solve the
    question, so compression keeps it rather than judging it on the samples that happened to finish."""
    _require(samples, [C.QUESTION_ID, C.CORRECT], "pass_rates")
    if C.ERROR in samples.columns:
        failed = samples[C.ERROR].fillna("").astype(str) != ""
        if failed.any():
            logger.warning("pass_rates: %d samples whose generation failed count as wrong (first error: %s)",
                           int(failed.sum()), samples.loc[failed, C.ERROR].iloc[0])
            samples = samples.assign(**{C.CORRECT: samples[C.CORRECT].where(~failed, False)})
    if samples[C.CORRECT].isna().any():
        raise ValueError(f"pass_rates: {int(samples[C.CORRECT].isna().sum())} samples have no '{C.CORRECT}' verdict")
    correct = samples[C.CORRECT].astype(bool)
    grouped = correct.groupby(samples[C.QUESTION_ID].astype(str), sort=True)
    out = pd.DataFrame({C.NUM_SAMPLES: grouped.size(), C.NUM_CORRECT: grouped.sum().astype(int)})
    out[C.PASS_RATE] = out[C.NUM_CORRECT] / out[C.NUM_SAMPLES]
    return out.rename_axis(C.QUESTION_ID).reset_index()[RATE_COLUMNS]


def compress(
    questions: list[dict],
    rates: pd.DataFrame,
    max_pass_rate: float,
    min_pass_rate: float | None = None,
    replay_fraction: float = 0.0,
    seed: int = 0,
) -> tuple[list[dict], list[dict]]:
    """Split questions into ``(kept, rejected)`` by the pass-rate band.

    Kept rows gain ``pass_rate``; rejected rows also gain ``stage="compression"`` and
    ``reason`` (``"too_easy"`` or ``"too_hard"``). Order of ``questions`` is preserved.
    ``replay_fraction`` keeps that share of the too-easy questions anyway (chosen by a hash of the
    question id and ``seed``), so the student rehearses what it knows instead of forgetting it;
    the paper's setting is 0.
    """
    _check_band(max_pass_rate, min_pass_rate)
    _require(rates, [C.QUESTION_ID, C.PASS_RATE], "compress")
    rate_of = _rate_map(rates)
    ids = [str(q[C.QUESTION_ID]) for q in questions]
    _refuse_duplicate_ids(ids)
    missing = [qid for qid in ids if qid not in rate_of]
    if missing:
        raise ValueError(f"compress: {len(missing)} questions have no student samples, e.g. {missing[:5]}")
    unknown = set(rate_of) - set(ids)
    if unknown:
        logger.warning("compress: %d pass rates belong to no given question (ignored)", len(unknown))
    kept, rejected = [], []
    for q, qid in zip(questions, ids):
        rate = rate_of[qid]
        reason = band_reason(rate, max_pass_rate, min_pass_rate)
        if reason == R_TOO_EASY and _replay(qid, seed) < replay_fraction:
            reason = ""
        row = {**q, C.PASS_RATE: rate}
        if reason:
            rejected.append({**row, C.STAGE: STAGE, C.REASON: reason})
        else:
            kept.append(row)
    logger.info("compress: kept %d of %d questions (band %s..%s)", len(kept), len(questions), min_pass_rate, max_pass_rate)
    return kept, rejected


def _replay(question_id: str, seed: int) -> float:
    """A stable uniform number in [0, 1) per question (replay choice independent of order)."""
    digest = hashlib.sha256(f"{seed}:{question_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def band_reason(rate: float, max_pass_rate: float, min_pass_rate: float | None = None) -> str:
    """``""`` when ``rate`` is inside the band, else ``"too_easy"`` / ``"too_hard"``."""
    if rate > max_pass_rate:
        return R_TOO_EASY
    if min_pass_rate is not None and rate < min_pass_rate:
        return R_TOO_HARD
    return ""


def histogram(rates: pd.DataFrame | Sequence[float], bins: int = 10) -> pd.DataFrame:
    """Counts of pass rates in ``bins`` equal bins over [0, 1] (last bin includes 1.0).

    Columns: ``bin`` (a label such as ``"0.2-0.3"``), ``lo``, ``hi``, ``count``."""
    values = rates[C.PASS_RATE] if isinstance(rates, pd.DataFrame) else rates
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=bins, range=(0.0, 1.0))
    labels = [f"{lo:.2g}-{hi:.2g}" for lo, hi in zip(edges[:-1], edges[1:])]
    return pd.DataFrame({"bin": labels, "lo": edges[:-1], "hi": edges[1:], "count": counts.astype(int)})


def _rate_map(rates: pd.DataFrame) -> dict[str, float]:
    ids = rates[C.QUESTION_ID].astype(str)
    if ids.duplicated().any():
        raise ValueError(f"compress: duplicate question ids in rates, e.g. {ids[ids.duplicated()].iloc[0]!r}")
    if rates[C.PASS_RATE].isna().any():
        raise ValueError("compress: rates contain missing pass rates")
    return dict(zip(ids, rates[C.PASS_RATE].astype(float)))


def _refuse_duplicate_ids(ids: list[str]) -> None:
    seen: set[str] = set()
    for qid in ids:
        if qid in seen:
            raise ValueError(f"compress: duplicate question_id {qid!r} in questions")
        seen.add(qid)


def _check_band(max_pass_rate: float, min_pass_rate: float | None) -> None:
    if not 0.0 <= max_pass_rate <= 1.0:
        raise ValueError(f"max_pass_rate must be in [0, 1], got {max_pass_rate}")
    if min_pass_rate is not None and not 0.0 <= min_pass_rate <= max_pass_rate:
        raise ValueError(f"min_pass_rate must be in [0, max_pass_rate={max_pass_rate}], got {min_pass_rate}")


def _require(df: pd.DataFrame, cols: list[str], where: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing columns {missing} (has {list(df.columns)})")
