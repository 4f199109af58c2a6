"""LLM-as-judge verification, the pure part: which rows a judge sees, its prompt, its verdict, and how the
verdict combines with math-verify's (the Ray Data stage around it is :mod:`ray_distill.curation.judge_stage`).

    prompt = render_judge_prompt(DEFAULT_JUDGE_PROMPT, question="1+1", reference="2", answer="\\boxed{2}")
    parse_verdict("The values match.\\nVERDICT: CORRECT")   # JudgeVerdict(label='correct', detail='')
    parse_verdict("I think so")                               # label 'unparsed', detail says why

The verdict is parsed strictly: the last non-empty line of the judge's output must be exactly
``VERDICT: CORRECT`` or ``VERDICT: INCORRECT``. Anything else is ``unparsed`` and the row is not verified
(a judge that rambles must not let rows through). A failed request is ``error``, also not verified.

Modes (``verify.judge.mode``): ``fallback`` judges only the rows math-verify could not decide (no final answer
parsed, or a reference that is not a math expression, such as a word); ``always`` judges every row whose
format passed; ``off``. Code rows (with tests) are never judged: the sandbox decides them. Where math-verify
did decide and the judge also ran (``always``), ``agree: both`` (the default) keeps only rows both accept: the
judge can veto a math-verify "correct" but never overrides its "wrong"; ``agree: either`` keeps a row either of
them accepts (the judge rescues equivalent answers math-verify misses, and can let a wrong one through).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

from ray_distill import columns as C

# The judge's verdict labels (the ``judge_verdict`` column; "" when the row was not judged).
CORRECT, INCORRECT, UNPARSED, ERROR = "correct", "incorrect", "unparsed", "error"
# Rejection reasons the judge gives (stable strings: they land in rejects files and MLflow counters).
R_JUDGE_INCORRECT = "judge_incorrect"
R_JUDGE_UNPARSED = "judge_unparsed_verdict"
R_JUDGE_ERROR = "judge_error"
_REASONS = {INCORRECT: R_JUDGE_INCORRECT, UNPARSED: R_JUDGE_UNPARSED, ERROR: R_JUDGE_ERROR}

# the placeholders of a judge prompt (config.JUDGE_PLACEHOLDERS; config.check_judge_prompt checks a job's template)
_PLACEHOLDER = re.compile(r"\{(question|reference|answer)\}")
_VERDICT_LINE = re.compile(r"VERDICT: (CORRECT|INCORRECT)")

DEFAULT_JUDGE_PROMPT = (
    "You are checking a student's final answer against the reference answer of a problem.\n\n"
    "Problem:\n{question}\n\n"
    "Reference answer:\n{reference}\n\n"
    "Student's final answer:\n{answer}\n\n"
    "Is the student's final answer equivalent to the reference answer (the same value, expression or choice; "
    "wording and formatting do not matter)? Explain in one sentence, then end with a last line that is exactly "
    "VERDICT: CORRECT or VERDICT: INCORRECT."
)

# Words that may appear in a math reference (function names); any other word of two or more letters outside a
# LaTeX command makes the reference text, not math: math-verify would read "Paris" as the product P*a*r*i*s.
_MATH_WORDS = frozenset({"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "max", "min", "gcd", "lcm",
                         "mod", "sqrt", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "lim", "inf", "pi",
                         "infty", "deg", "det", "and", "or", "text", "mathrm", "frac", "dfrac", "boxed"})
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")


@dataclass(frozen=True)
class JudgeVerdict:
    label: str  # correct | incorrect | unparsed | error
    detail: str  # why it is unparsed or an error ("" otherwise)

    @property
    def correct(self) -> bool:
        return self.label == CORRECT

    @property
    def decided(self) -> bool:
        return self.label in (CORRECT, INCORRECT)


def render_judge_prompt(template: str, question: str, reference: str, answer: str) -> str:
    """The judge's user message. Placeholders are filled in one pass, so braces in the values (LaTeX, or a
    question that itself says ``{answer}``) are left as they are."""
    values = {"question": question, "reference": reference, "answer": answer}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def parse_verdict(text: str, finish_reason: str = "stop", error: str = "") -> JudgeVerdict:
    """The verdict of one judge output (see the module docstring for the strict rule)."""
    if error:
        return JudgeVerdict(ERROR, error.splitlines()[0][:200])
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return JudgeVerdict(UNPARSED, "empty judge output" + (" (cut at max_tokens)" if finish_reason == "length" else ""))
    m = _VERDICT_LINE.fullmatch(lines[-1])
    if m:
        return JudgeVerdict(CORRECT if m.group(1) == "CORRECT" else INCORRECT, "")
    cut = " (cut at max_tokens)" if finish_reason == "length" else ""
    return JudgeVerdict(UNPARSED, f"last line {lines[-1][:80]!r} is not 'VERDICT: CORRECT' or 'VERDICT: INCORRECT'{cut}")


def is_math_reference(reference: str) -> bool:
    """Whether math-verify can decide against ``reference``: it is non-empty and no word in it (outside LaTeX
    commands and common function names) reads as a product of variables."""
    text = (reference or "").strip()
    if not text:
        return False
    return all(w.lower() in _MATH_WORDS for w in _WORD.findall(text))


def math_verify_decided(predicted: str, reference: str) -> bool:
    """Math-verify decided a math row when it extracted a final answer and the reference is math."""
    return bool(predicted) and is_math_reference(reference)


def needs_judge(mode: str, format_ok: bool, tests: str, decided: bool) -> bool:
    """Whether a graded row goes to the judge (module docstring: modes; code and malformed rows never do)."""
    if mode == "off" or not format_ok or tests:
        return False
    return mode == "always" or not decided


def combine(mv_correct: bool, mv_reason: str, decided: bool, verdict: JudgeVerdict | None,
            agree: str = "both") -> tuple[bool, str]:
    """(correct, reason) of a row after the judge. ``verdict`` None: not judged, math-verify stands. Where
    math-verify did not decide, the judge alone decides; where both decided, ``agree`` says how they combine."""
    if verdict is None:
        return mv_correct, mv_reason
    judge_reason = "" if verdict.correct else _REASONS[verdict.label]
    if not decided:
        return verdict.correct, judge_reason
    if agree == "both":
        correct = mv_correct and verdict.correct
        return correct, "" if correct else (mv_reason or judge_reason)
    correct = mv_correct or verdict.correct
    return correct, "" if correct else mv_reason


def answer_for_judge(completion: str) -> str:
    """What the judge compares with the reference: the final-answer region of the completion (the text after
    ``</think>``), the same region math-verify reads."""
    from ray_distill.curation.graders import final_answer_region

    return final_answer_region(completion or "").strip()


def judge_summary(df: pd.DataFrame) -> dict[str, float]:
    """MLflow counters of judged rows: calls made now, rows answered without a new call (from the store, or
    sharing a call with a row of the same prompt), tokens, verdicts, rows the
    judge accepted that math-verify rejected (rescued) and the reverse (vetoed), and the agreement rate with
    math-verify where both decided (NaN when there is no such row)."""
    if C.JUDGE_VERDICT not in df.columns:
        return {}
    judged = df[df[C.JUDGE_VERDICT] != ""]
    out: dict[str, float] = {
        "judge/rows": len(judged),
        "judge/calls": int(judged[C.JUDGE_CALLED].sum()),
        "judge/cached": int((~judged[C.JUDGE_CALLED].astype(bool) & (judged[C.JUDGE_VERDICT] != ERROR)).sum()),
        "judge/tokens": int(judged.loc[judged[C.JUDGE_CALLED].astype(bool), C.JUDGE_TOKENS].clip(lower=0).sum()),
    }
    for label in (CORRECT, INCORRECT, UNPARSED, ERROR):
        out[f"judge/verdict_{label}"] = int((judged[C.JUDGE_VERDICT] == label).sum())
    both = judged[judged[C.MATH_VERIFY_DECIDED].astype(bool) & judged[C.JUDGE_VERDICT].isin([CORRECT, INCORRECT])]
    mv = both[C.MATH_VERIFY_CORRECT].astype(bool)
    judge_ok = both[C.JUDGE_VERDICT] == CORRECT
    out["judge/agreement_rows"] = len(both)
    out["judge/agreement"] = float((mv == judge_ok).mean()) if len(both) else float("nan")
    out["judge/rescued"] = int((~judged[C.MATH_VERIFY_CORRECT].astype(bool) & judged[C.CORRECT].astype(bool)).sum())
    out["judge/vetoed"] = int((judged[C.MATH_VERIFY_CORRECT].astype(bool) & ~judged[C.CORRECT].astype(bool)).sum())
    return out
