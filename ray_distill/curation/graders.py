"""Graders: the one definition of "correct" used by curation, compression and evaluation.

    verdict = grade(completion, reference="0", max_tokens=512, count_tokens=len)
    verdict.correct, verdict.format_ok, verdict.reason

- format: a strict ``<think>…</think>`` pair at the start of the response, and a length cap in
  student tokens;
- math: the final answer (the text after ``</think>``; ``\\boxed{}`` preferred) checked against the
  reference with math-verify, so LaTeX/number/fraction equivalence comes from the library.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from math_verify import parse, verify

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# Rejection reasons (stable strings: they land in rejects files and MLflow counters).
R_EMPTY = "empty_response"
R_NO_THINK = "missing_think_open"
R_UNCLOSED = "unclosed_think"
R_NESTED = "multiple_think_blocks"
R_TOO_LONG = "over_length_cap"
R_NO_ANSWER = "no_final_answer"
R_WRONG = "wrong_answer"


@dataclass(frozen=True)
class Verdict:
    format_ok: bool
    correct: bool
    predicted: str
    reason: str  # "" when format_ok and correct


def check_format(text: str, require_think: bool = True) -> str:
    """Return "" when ``text`` has one well-formed think block at its start, else the reason."""
    stripped = text.strip()
    if not stripped:
        return R_EMPTY
    if not require_think:
        return ""
    if not stripped.startswith(THINK_OPEN):
        return R_NO_THINK
    if text.count(THINK_OPEN) > 1 or text.count(THINK_CLOSE) > 1:
        return R_NESTED
    if THINK_CLOSE not in text:
        return R_UNCLOSED
    return ""


def final_answer_region(text: str) -> str:
    """The text after ``</think>`` (the whole text when there is no think block)."""
    return text.rsplit(THINK_CLOSE, 1)[-1]


def _timeouts() -> int | None:
    # math-verify's timeouts use SIGALRM, which only works in the main thread; Ray Data may call
    # UDFs from other threads. Inputs here are short final-answer regions, so no timeout is safe.
    return 5 if threading.current_thread() is threading.main_thread() else None


def extract_answer(text: str) -> list:
    """math-verify's parse of the final-answer region (``[]`` when nothing is found)."""
    return parse(final_answer_region(text), parsing_timeout=_timeouts())


def answers_match(reference: str, text: str) -> tuple[bool, str]:
    """(is the final answer of ``text`` equivalent to ``reference``, the extracted answer)."""
    pred = extract_answer(text)
    if not pred:
        return False, ""
    gold = parse(f"${reference}$" if not reference.startswith("$") else reference, parsing_timeout=_timeouts())
    if not gold:
        gold = parse(reference, parsing_timeout=_timeouts())
    ok = bool(verify(gold, pred, timeout_seconds=_timeouts()))
    return ok, str(pred[-1])


def grade(
    text: str,
    reference: str,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    require_think: bool = True,
) -> Verdict:
    """Grade one response: format first (cheap), then the final answer with math-verify.

    ``correct`` reports answer correctness even when the format fails (evaluation counts a right
    answer without think tags as right; curation keeps only ``format_ok and correct``).
    """
    reason = check_format(text, require_think)
    if not reason and max_tokens is not None:
        n = count_tokens(text) if count_tokens else len(text)
        if n > max_tokens:
            reason = R_TOO_LONG
    correct, predicted = answers_match(reference, text) if text.strip() else (False, "")
    if not reason and not correct:
        reason = R_WRONG if predicted else R_NO_ANSWER
    return Verdict(format_ok=reason in ("", R_WRONG, R_NO_ANSWER), correct=correct, predicted=predicted, reason=reason)
