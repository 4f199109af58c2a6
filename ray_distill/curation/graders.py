"""Graders: the one definition of "correct" used by curation, compression and evaluation.

    verdict = grade(completion, reference="0", max_tokens=512, count_tokens=len)
    verdict.correct, verdict.format_ok, verdict.reason

- format: a strict ``<think>…</think>`` pair at the start of the response, and a length cap in
  student tokens;
- math: the final answer (the text after ``</think>``; ``\\boxed{}`` preferred) checked against the
  reference with math-verify, so LaTeX/number/fraction equivalence comes from the library. Only a finished
  answer counts: a think block opened and never closed (cut off by the token cap) has no final answer, in
  curation, compression and evaluation alike (:func:`final_answer_region`);
- code: the last fenced ```python block after ``</think>`` run against the question's tests in the
  sandbox (``curation.sandbox``); correct iff every test passes;
- multiple choice (rows with ``answer_format: choice``, e.g. a GPQA suite): the option letter of the
  final answer (the last ``\\boxed{}``, else a closing "answer is (X)") equals the reference letter.

:func:`grade_row` dispatches on the question: non-empty ``tests`` -> code, ``choice`` -> letter, otherwise math.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import math_verify.grader
import math_verify.parser
from math_verify import parse, verify

from ray_distill.curation import sandbox as S
from ray_distill.data.questions import parse_tests

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# Rejection reasons (stable strings: they land in rejects files and MLflow counters).
# Sandboxed code tests run at once while grading (each may take the sandbox's memory limit).
MAX_GRADING_THREADS = 16
R_EMPTY = "empty_response"
R_NO_THINK = "missing_think_open"
R_UNCLOSED = "unclosed_think"
R_NESTED = "multiple_think_blocks"
R_TOO_LONG = "over_length_cap"
R_NO_ANSWER = "no_final_answer"
R_WRONG = "wrong_answer"
R_GRADER_TIMEOUT = "grader_timeout"  # math-verify did not finish within MATH_TIMEOUT_S: not verified
R_NO_CODE = "no_code_block"
R_NO_CHOICE = "no_option_letter"
R_CODE_WRONG = "code_wrong_output"
R_CODE_TIMEOUT = "code_timeout"
R_CODE_ERROR = "code_runtime_error"
R_CODE_MEMORY = "code_memory_limit"
R_CODE_OUTPUT = "code_output_limit"
R_CODE_SANDBOX = "code_sandbox_error"
R_CODE_KILLED = "code_killed"  # SIGKILL that was not the timeout: out of memory (OOM killer) or a signal
_CODE_REASONS = {S.WRONG_OUTPUT: R_CODE_WRONG, S.TIMEOUT: R_CODE_TIMEOUT, S.RUNTIME_ERROR: R_CODE_ERROR,
                 S.MEMORY_LIMIT: R_CODE_MEMORY, S.OUTPUT_LIMIT: R_CODE_OUTPUT, S.KILLED: R_CODE_KILLED,
                 S.SANDBOX_ERROR: R_CODE_SANDBOX}
# Reasons about the answer itself: the format is fine.
ANSWER_REASONS = frozenset({"", R_WRONG, R_NO_ANSWER, R_GRADER_TIMEOUT, R_NO_CODE, R_NO_CHOICE,
                            *_CODE_REASONS.values()})
MATH_TIMEOUT_S = 5
CHOICE = "choice"  # answer_format of multiple-choice rows
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


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


def final_answer_region(text: str, finished_only: bool = True) -> str:
    """The text after the last ``</think>``; the whole text when there is no think block. A think block that
    was opened and never closed (reasoning cut off by the token cap, or never finished) has no final answer:
    ``""``, so an answer written inside unfinished reasoning never counts. ``finished_only=False`` grades the
    whole text instead (a non-reasoning student that writes the tags loosely)."""
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[-1]
    if finished_only and THINK_OPEN in text:
        return ""
    return text


class GraderTimeout(Exception):
    """math-verify overran :data:`MATH_TIMEOUT_S` on one answer."""


def _timeouts() -> int | None:
    # math-verify's own timeouts use SIGALRM, which only works in the main thread; elsewhere with_deadline
    # bounds the call. math-verify then warns once per process (twice per grader actor on the console) that
    # "you must provide the logic for timeout interruption yourself": we do, so its warning is marked shown.
    if threading.current_thread() is threading.main_thread():
        return MATH_TIMEOUT_S
    math_verify.grader.TIMEOUT_WARNING_SHOWN = math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    return None


def with_deadline(fn: Callable, *args, timeout_s: float | None = None):
    """``fn(*args)``, or :class:`GraderTimeout` after ``timeout_s`` (default :data:`MATH_TIMEOUT_S`). In the main thread
    math-verify's signal-based timeouts apply (``_timeouts``); elsewhere (Ray Data runs actor UDFs in
    worker threads, evaluation grades in a thread pool) the call runs in a daemon thread that is
    abandoned when it overruns: the batch goes on, the stuck call finishes (or not) on its own."""
    if threading.current_thread() is threading.main_thread():
        return fn(*args)  # an overrun there ends in math-verify's alarm: nothing parsed, not verified
    timeout_s = timeout_s or MATH_TIMEOUT_S
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as err:  # handed to the caller
            box["error"] = err

    worker = threading.Thread(target=run, daemon=True, name="math-verify")
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise GraderTimeout(f"math-verify took longer than {timeout_s}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def extract_answer(text: str, finished_only: bool = True) -> list:
    """math-verify's parse of the final-answer region (``[]`` when nothing is found)."""
    region = final_answer_region(text, finished_only)
    return parse(region, parsing_timeout=_timeouts()) if region.strip() else []


def answers_match(reference: str, text: str, finished_only: bool = True) -> tuple[bool, str]:
    """(is the final answer of ``text`` equivalent to ``reference``, the extracted answer); raises
    :class:`GraderTimeout` when math-verify overruns (in any thread)."""
    return with_deadline(_answers_match, reference, text, finished_only)


def _answers_match(reference: str, text: str, finished_only: bool = True) -> tuple[bool, str]:
    pred = extract_answer(text, finished_only)
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
    finished_only: bool = True,
) -> Verdict:
    """Grade one response: format first (cheap), then the final answer with math-verify.

    ``correct`` reports answer correctness even when the format fails (evaluation counts a right
    answer without think tags as right; curation keeps only ``format_ok and correct``), but an answer
    inside an unclosed think block is no answer (:func:`final_answer_region`, ``finished_only``).
    """
    reason = _format_reason(text, max_tokens, count_tokens, require_think)
    try:
        correct, predicted = answers_match(reference, text, finished_only) if text.strip() else (False, "")
    except GraderTimeout:
        return Verdict(format_ok=reason in ANSWER_REASONS, correct=False, predicted="", reason=reason or R_GRADER_TIMEOUT)
    if not reason and not correct:
        reason = R_WRONG if predicted else R_NO_ANSWER
    return Verdict(format_ok=reason in ANSWER_REASONS, correct=correct, predicted=predicted, reason=reason)


def extract_choice(text: str, finished_only: bool = True) -> str:
    """The option letter (A-J) of the final answer: the last ``\\boxed{}`` holding a letter (``B``, ``(B)``,
    ``B) 42``, ``\\text{B}``), else the last "answer is (B)" / "Answer: B"; "" when there is none."""
    from ray_distill.data.questions import last_boxed

    region = final_answer_region(text, finished_only)
    boxed = last_boxed(region)
    if boxed is not None:
        inner = re.sub(r"^\\text(?:bf)?\{(.*)\}$", r"\1", boxed.strip()).strip()
        m = _BOXED_LETTER.match(inner)
        return m.group(1) if m else ""
    hits = _ANSWER_LETTER.findall(region)
    return hits[-1] if hits else ""


_BOXED_LETTER = re.compile(r"^\(?([A-J])\)?(?:[).:\s]|$)")
_ANSWER_LETTER = re.compile(r"(?:[Aa]nswer|ANSWER)\s*(?:is|:)?\s*:?\s*\(?([A-J])\)?(?![A-Za-z])")


def grade_choice(text: str, reference: str, max_tokens: int | None = None,
                 count_tokens: Callable[[str], int] | None = None, require_think: bool = True,
                 finished_only: bool = True) -> Verdict:
    """Grade a multiple-choice response: the same format rules, then its option letter against the
    reference letter (no equivalence checking: a letter is right or wrong)."""
    reason = _format_reason(text, max_tokens, count_tokens, require_think)
    predicted = extract_choice(text, finished_only) if text.strip() else ""
    correct = bool(predicted) and predicted == reference.strip().upper()
    if not reason and not correct:
        reason = R_WRONG if predicted else R_NO_CHOICE
    return Verdict(format_ok=reason in ANSWER_REASONS, correct=correct, predicted=predicted, reason=reason)


def _format_reason(text: str, max_tokens: int | None, count_tokens: Callable[[str], int] | None,
                   require_think: bool) -> str:
    reason = check_format(text, require_think)
    if not reason and max_tokens is not None:
        n = count_tokens(text) if count_tokens else len(text)
        if n > max_tokens:
            reason = R_TOO_LONG
    return reason


def extract_program(text: str, finished_only: bool = True) -> str:
    """The last fenced ```python (or ```py) block after ``</think>`` ("" when there is none)."""
    blocks = _FENCE.findall(final_answer_region(text, finished_only))
    return blocks[-1].strip("\n") if blocks else ""


_PREDICTED_CHARS = 300  # a failed code run's stored summary (reason-shaped: see grade_code)


def grade_code(
    text: str,
    tests: dict,
    sandbox: S.Sandbox,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    require_think: bool = True,
    finished_only: bool = True,
) -> Verdict:
    """Grade one code response: the same format rules as math, then the program against ``tests``
    (canonical dict) in ``sandbox``, stopping at the first failing test. ``predicted`` summarises the
    run ("passed 3/3", "test 2/3: runtime_error: ValueError"); it is stored in the graded Parquet and the
    rejects file, so it holds only the sandbox's reason-shaped detail, capped at 300 characters: the name of
    a built-in exception (an ``OSError``'s errno and the system's text for it), an exit code or signal, the
    test's expected output and the shape of what the program printed or returned -- never the program's
    own output or messages (see :func:`ray_distill.curation.sandbox.error_summary`)."""
    reason = _format_reason(text, max_tokens, count_tokens, require_think)
    program = extract_program(text, finished_only)
    if not program:
        return Verdict(format_ok=reason in ANSWER_REASONS, correct=False, predicted="", reason=reason or R_NO_CODE)
    results = sandbox.run_tests(program, tests, stop_on_failure=True)
    n = len(tests["cases"])
    failed = next((r for r in results if not r.passed), None)
    correct = failed is None
    if correct:
        predicted = f"passed {n}/{n}"
    else:
        predicted = f"test {len(results)}/{n}: {failed.reason}: {failed.detail}"[:_PREDICTED_CHARS]
        reason = reason or _CODE_REASONS[failed.reason]
    return Verdict(format_ok=reason in ANSWER_REASONS, correct=correct, predicted=predicted, reason=reason)


def grade_row(
    text: str,
    reference: str,
    tests: str = "",
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    require_think: bool = True,
    sandbox: S.Sandbox | None = None,
    answer_format: str = "",
    finished_only: bool = True,
) -> Verdict:
    """Grade one response to one question: as code when the question has ``tests`` (the canonical
    JSON string of the ``tests`` column), by option letter when ``answer_format`` is ``choice``, else
    as math against ``reference``. Without ``sandbox``, a default one (:func:`default_sandbox`) runs the code."""
    if not tests and answer_format == CHOICE:
        return grade_choice(text, reference, max_tokens, count_tokens, require_think, finished_only)
    if not tests:
        return grade(text, reference, max_tokens, count_tokens, require_think, finished_only)
    return grade_code(text, parse_tests(tests), sandbox or default_sandbox(), max_tokens, count_tokens, require_think,
                      finished_only)


def grade_rows(
    texts: list[str],
    references: list[str],
    tests: list[str],
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    require_think: bool = True,
    sandbox: S.Sandbox | None = None,
    formats: list[str] | None = None,
    finished_only: bool = True,
) -> list[Verdict]:
    """:func:`grade_row` over rows, in order (``formats``: each row's ``answer_format``; None: all default).
    Math rows are graded in the calling thread (math-verify's timeouts use signals); code rows, whose tests
    are sandboxed subprocesses, in a thread pool of one thread per core (at most :data:`MAX_GRADING_THREADS`)."""
    formats = formats or [""] * len(texts)

    def one(i: int) -> Verdict:
        return grade_row(texts[i], references[i], tests[i], max_tokens, count_tokens, require_think, sandbox,
                         formats[i], finished_only)

    verdicts: list[Verdict | None] = [None if t else one(i) for i, t in enumerate(tests)]
    code = [i for i, t in enumerate(tests) if t]
    if code:
        with ThreadPoolExecutor(max_workers=min(len(code), os.cpu_count() or 1, MAX_GRADING_THREADS)) as pool:
            for i, verdict in zip(code, pool.map(one, code)):
                verdicts[i] = verdict
    return verdicts


def sandbox_from_config(code: dict | None = None) -> S.Sandbox:
    """A sandbox from ``format.code`` (a ``CodeGraderConfig`` dump; None: the defaults)."""
    from ray_distill.config import CodeGraderConfig

    c = CodeGraderConfig.model_validate(code or {})
    limits = S.Limits(c.timeout_s, c.memory_mb, c.max_processes, c.max_output_bytes, c.max_open_files,
                      c.max_tmp_bytes)
    return S.Sandbox(limits, backend=c.backend, python=c.python, node_concurrency=c.node_concurrency)


@functools.lru_cache(maxsize=None)
def default_sandbox() -> S.Sandbox:
    """A sandbox with default limits, built on first use (so math-only runs never need one)."""
    return sandbox_from_config(None)
