"""Benchmark suite presets (pure): how the files of the paper's benchmarks are laid out, how their questions
are asked and how their answers are graded, so that a suite is a preset plus a file (local or hf://).

    suite = SuiteConfig(name="aime24", preset="aime", path="hf://datasets/<org>/<aime-2024>/<file>.parquet")
    mapping = row_mapping(suite)       # the preset's column candidates + the suite's own fields: and options
    prompt_template(suite)             # the suite's prompt:, else the preset's

- ``aime``: ``problem``/``answer``/``id`` columns (AIME 2024/2025 files as published); the answer must be an
  integer (``"033"`` -> ``"33"``; anything else is a row reject, reason ``invalid_answer``); graded by
  math-verify against the ``\\boxed{}`` answer.
- ``math500``: ``problem``/``answer``/``unique_id`` (MATH-500); ``\\boxed{}`` answer, graded by math-verify.
- ``gpqa``: ``Question``, ``Correct Answer``, ``Incorrect Answer 1..3``, ``Record ID`` (GPQA's CSV/parquet
  columns). The four options are built into the question text as ``A) ...`` lines in an order seeded by the
  question (the same order every run, on every machine: no shuffling at evaluation time), and the reference
  answer is the correct option's letter; rows carry ``answer_format: choice`` and are graded by letter
  (``curation.graders.grade_choice``).
- ``code``: LiveCodeBench-style ``question_content``/``public_test_cases``/``question_id``/``contest_date``
  (or ``question``/``input_output``/``id``; a difficulty label ``easy``/``medium``/``hard`` becomes 1/2/3);
  graded by running the tests in the sandbox. ``date_from`` /
  ``date_to`` keep the questions of a contest-date window (others are rejected, reason
  ``outside_date_window``: LiveCodeBench's answer to contamination is to score only problems published
  after the model's training cut-off).

A suite's own ``fields:`` override the preset's candidates, its ``prompt:`` the preset's prompt.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ray_distill import columns as C
from ray_distill.config import QuestionsConfig, SuiteConfig
from ray_distill.data.questions import R_MISSING, RowError, RowMapping

BOXED_PROMPT = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."
CHOICE_PROMPT = "{question}\nPlease reason step by step, and put the letter of your answer within \\boxed{}."
CODE_PROMPT = ("{question}\n\nThink step by step, then give the complete program in one ```python block (read from "
               "standard input, write to standard output, or define the requested function).")

CHOICE = "choice"  # answer_format of multiple-choice rows: graded by the option letter
LETTERS = "ABCDEFGHIJ"
R_INVALID_ANSWER = "invalid_answer"
R_DATE = "invalid_date"
R_OUTSIDE_WINDOW = "outside_date_window"


@dataclass(frozen=True)
class Preset:
    prompt: str
    defaults: dict[str, tuple[str, ...]]  # target -> candidate columns, first present wins
    required: tuple[str, ...]
    answer_format: str = ""  # "" : math-verify (or the tests of a code row); "choice": option letter
    prepare: Callable[[SuiteConfig], Callable[[dict], dict] | None] = field(default=lambda suite: None)


def _integer_answer(suite: SuiteConfig) -> Callable[[dict], dict]:
    def prepare(row: dict) -> dict:
        value = row.get(C.ANSWER)
        if value is None or (isinstance(value, str) and not value.strip()):
            return row  # missing: rejected as such by the row check
        text = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value).strip()
        if not re.fullmatch(r"[+-]?\d+", text):
            raise RowError(f"{R_INVALID_ANSWER}: {suite.preset} answers are integers, got {value!r}")
        return {**row, C.ANSWER: str(int(text))}
    return prepare


def _multiple_choice(suite: SuiteConfig) -> Callable[[dict], dict]:
    return build_choices


def build_choices(row: dict) -> dict:
    """A GPQA-style row (``question``, ``correct_answer``, ``incorrect_answers``) -> the question with its
    lettered options (order seeded by the question id, else its text) and the correct letter as answer."""
    correct, wrong = row.get("correct_answer"), row.get("incorrect_answers") or []
    options = [correct, *wrong]
    for i, option in enumerate(options):
        if not isinstance(option, (str, int, float)) or isinstance(option, bool) or not str(option).strip():
            what = "correct_answer" if i == 0 else f"incorrect_answers[{i - 1}]"
            raise RowError(f"{R_MISSING}: option {what} is empty")
    if len(options) < 2 or len(options) > len(LETTERS):
        raise RowError(f"{R_INVALID_ANSWER}: {len(options)} options (2 to {len(LETTERS)} allowed)")
    texts = [" ".join(str(o).split()) for o in options]
    question = str(row.get(C.QUESTION) or "").strip()
    key = str(row.get(C.QUESTION_ID) or question)
    order = list(range(len(texts)))
    random.Random(f"choices:{key}").shuffle(order)
    lines = [f"{LETTERS[pos]}) {texts[i]}" for pos, i in enumerate(order)]
    return {**row, C.QUESTION: (f"{question}\n\n" + "\n".join(lines)) if question else "",
            C.ANSWER: LETTERS[order.index(0)]}


DIFFICULTY_WORDS = {"easy": 1, "medium": 2, "hard": 3}  # LiveCodeBench, Codeforces-style labels


def _difficulty_word(row: dict) -> dict:
    """A difficulty label (``easy``/``medium``/``hard``) as the integer knob; other values as they are."""
    value = row.get(C.DIFFICULTY)
    if isinstance(value, str) and value.strip().lower() in DIFFICULTY_WORDS:
        return {**row, C.DIFFICULTY: DIFFICULTY_WORDS[value.strip().lower()]}
    return row


def _code(suite: SuiteConfig) -> Callable[[dict], dict]:
    window = _date_window(suite)
    return _chain([_difficulty_word, *([window] if window else [])])


def _date_window(suite: SuiteConfig) -> Callable[[dict], dict] | None:
    if suite.date_from is None and suite.date_to is None:
        return None

    def prepare(row: dict) -> dict:
        day = to_date(row.get("date"))
        if suite.date_from is not None and day < suite.date_from:
            raise RowError(f"{R_OUTSIDE_WINDOW}: dated {day}, before date_from {suite.date_from}")
        if suite.date_to is not None and day > suite.date_to:
            raise RowError(f"{R_OUTSIDE_WINDOW}: dated {day}, after date_to {suite.date_to}")
        return row
    return prepare


def to_date(value) -> dt.date:
    """A date column's value (a date, a datetime, an ISO string) as a date, or :class:`RowError`."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and value.strip():
        try:
            return dt.date.fromisoformat(value.strip()[:10])
        except ValueError:
            pass
    if value is None:
        raise RowError(f"{R_MISSING}: the date column (fields.date)")
    raise RowError(f"{R_DATE}: {value!r} is not a date (YYYY-MM-DD...)")


_ID = ("id", "ID", "question_id", "unique_id", "problem_id")
PRESETS: dict[str, Preset] = {
    "aime": Preset(BOXED_PROMPT, {C.QUESTION: ("problem", "question", "Problem"), C.ANSWER: ("answer", "Answer"),
                                  C.QUESTION_ID: _ID}, (C.QUESTION, C.ANSWER), prepare=_integer_answer),
    "math500": Preset(BOXED_PROMPT, {C.QUESTION: ("problem", "question"), C.ANSWER: ("answer",),
                                     C.QUESTION_ID: ("unique_id", *_ID)}, (C.QUESTION, C.ANSWER)),
    "gpqa": Preset(CHOICE_PROMPT, {C.QUESTION: ("Question", "question"), "correct_answer": ("Correct Answer",),
                                   "incorrect_answers": ("Incorrect Answer 1", "Incorrect Answer 2",
                                                         "Incorrect Answer 3"),
                                   C.QUESTION_ID: ("Record ID", *_ID)},
                   (C.QUESTION, "correct_answer", "incorrect_answers"), answer_format=CHOICE,
                   prepare=_multiple_choice),
    "code": Preset(CODE_PROMPT, {C.QUESTION: ("question_content", "question", "problem", "prompt"),
                                 C.TESTS: ("public_test_cases", "input_output", "test_cases", "tests"),
                                 C.QUESTION_ID: ("question_id", "id", "problem_id", "task_id"),
                                 "date": ("contest_date", "date", "release_date")},
                   (C.QUESTION, C.TESTS), prepare=_code),
}


def row_mapping(source: QuestionsConfig | SuiteConfig) -> RowMapping:
    """How ``source``'s file becomes question rows: its preset's candidates and hooks under its own
    ``fields:`` and ``answer_from``; a date window without a preset works on ``fields.date``."""
    preset = PRESETS.get(getattr(source, "preset", None) or "")
    hooks = []
    if preset is not None:
        hooks.append(preset.prepare(source))
    elif isinstance(source, SuiteConfig):
        hooks.append(_date_window(source))
    hooks = [h for h in hooks if h is not None]
    required = preset.required if preset else ()
    if preset is not None and (source.date_from or source.date_to):  # a window needs the date column
        required += ("date",)
    return RowMapping(fields=dict(source.fields), defaults=dict(preset.defaults) if preset else {},
                      required=required, answer_from=source.answer_from, prepare=_chain(hooks))


def _chain(hooks: list[Callable[[dict], dict]]) -> Callable[[dict], dict] | None:
    if not hooks:
        return None

    def prepare(row: dict) -> dict:
        for hook in hooks:
            row = hook(row)
        return row
    return prepare


def prompt_template(source: QuestionsConfig | SuiteConfig):
    """The source's own ``prompt:``, else its preset's, else None (the question as it is)."""
    preset = PRESETS.get(getattr(source, "preset", None) or "")
    return source.prompt if source.prompt is not None or preset is None else preset.prompt


def answer_format(source: QuestionsConfig | SuiteConfig) -> str:
    """``choice`` for multiple-choice suites, else "" (math-verify, or a code row's tests)."""
    preset = PRESETS.get(getattr(source, "preset", None) or "")
    return preset.answer_format if preset else ""
