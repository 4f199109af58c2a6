"""Built-in verifiable task families, emitted in the same question schema as real data.

Families (difficulty = number of steps):
- ``arith`` (in-domain "math"): mod-10 chains such as ``9+0-9``; exact answer ``0``.
- ``max`` (out-of-domain, a different kind of reasoning): ``max(3,7,2)``; answer ``7``.

Each family also knows its own *local* chain of thought (one short step per operation, each step
restating its operands right before its result), which the scripted teachers build on.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from ray_distill import columns as C

_ARITH_RE = re.compile(r"^\d([+-]\d)+$")
_MAX_RE = re.compile(r"^max\((\d(?:,\d)+)\)$")


@dataclass(frozen=True)
class Step:
    """One reasoning step: ``left op right = result`` (op is '+', '-', 'max', or 'min' in base pretraining)."""

    left: int
    op: str
    right: int
    result: int


def arith_question(rng: random.Random, steps: int) -> str:
    digits = [rng.randrange(10) for _ in range(steps + 1)]
    ops = [rng.choice("+-") for _ in range(steps)]
    return str(digits[0]) + "".join(f"{o}{d}" for o, d in zip(ops, digits[1:]))


def arith_steps(question: str) -> list[Step]:
    if not _ARITH_RE.match(question):
        raise ValueError(f"not an arith question: {question!r}")
    acc, steps = int(question[0]), []
    for i in range(1, len(question), 2):
        op, right = question[i], int(question[i + 1])
        result = (acc + right) % 10 if op == "+" else (acc - right) % 10
        steps.append(Step(acc, op, right, result))
        acc = result
    return steps


def max_question(rng: random.Random, steps: int) -> str:
    return "max(" + ",".join(str(rng.randrange(10)) for _ in range(steps + 1)) + ")"


def max_steps(question: str) -> list[Step]:
    m = _MAX_RE.match(question)
    if not m:
        raise ValueError(f"not a max question: {question!r}")
    items = [int(x) for x in m.group(1).split(",")]
    acc, steps = items[0], []
    for right in items[1:]:
        result = max(acc, right)
        steps.append(Step(acc, "max", right, result))
        acc = result
    return steps


@dataclass(frozen=True)
class Family:
    name: str
    make: Callable[[random.Random, int], str]
    steps: Callable[[str], list[Step]]


FAMILIES: dict[str, Family] = {
    "arith": Family("arith", arith_question, arith_steps),
    "max": Family("max", max_question, max_steps),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown task family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_of(question: str) -> Family:
    """The family that can parse ``question`` (scripted teachers only see the text)."""
    if _ARITH_RE.match(question):
        return FAMILIES["arith"]
    if _MAX_RE.match(question):
        return FAMILIES["max"]
    raise ValueError(f"question {question!r} belongs to no synthetic family")


def solve_steps(question: str) -> list[Step]:
    return family_of(question).steps(question)


def answer_of(question: str) -> str:
    return str(solve_steps(question)[-1].result)


def step_text(step: Step) -> str:
    """The local form of one step: ``9+0=9``, ``max(3,7)=7`` or ``min(3,7)=3``."""
    if step.op in ("max", "min"):
        return f"{step.op}({step.left},{step.right})={step.result}"
    return f"{step.left}{step.op}{step.right}={step.result}"


def question_id(family: str, question: str) -> str:
    return hashlib.sha1(f"{family}:{question}".encode()).hexdigest()[:16]


def make_questions(
    family: str, num: int, min_difficulty: int, max_difficulty: int, seed: int, exclude: set[str] | None = None
) -> list[dict]:
    """``num`` distinct questions with difficulties spread evenly over ``[min, max]`` (a level with
    fewer distinct questions, such as single-step arith with 200, gives what it has; the rest go to
    the other levels).

    Rows follow the question schema (``ray_distill.columns.QUESTION_COLUMNS``). ``exclude`` holds
    question texts that must not appear (e.g. evaluation questions when building a training pool).
    """
    fam = get_family(family)
    rng = random.Random(f"{family}:{seed}")
    exclude = exclude or set()
    seen: set[str] = set()
    rows: list[dict] = []
    levels = list(range(min_difficulty, max_difficulty + 1))
    misses = {level: 0 for level in levels}  # consecutive duplicate draws: a level with few questions runs dry
    i = 0
    while len(rows) < num:
        live = [lv for lv in levels if misses[lv] < 200]
        if not live:
            raise ValueError(
                f"cannot draw {num} distinct {family} questions at difficulty {min_difficulty}..{max_difficulty}"
            )
        level = live[i % len(live)]
        q = fam.make(rng, level)
        if q in seen or q in exclude:
            misses[level] += 1
            continue
        i += 1
        misses[level] = 0
        seen.add(q)
        rows.append(
            {
                C.QUESTION_ID: question_id(family, q),
                C.QUESTION: q,
                C.ANSWER: str(fam.steps(q)[-1].result),
                C.FAMILY: family,
                C.DIFFICULTY: level,
                C.TESTS: "",
            }
        )
    return rows


def base_corpus(num: int, seed: int = 0) -> list[dict]:
    """The synthetic "pretraining" data of the base student: single-step facts of every family,
    written in the local chain-of-thought form, as chat ``messages`` rows."""
    rng = random.Random(f"base:{seed}")
    rows = []
    for _ in range(num):
        fam = FAMILIES[rng.choice(sorted(FAMILIES))]
        q = fam.make(rng, 1)
        (step,) = fam.steps(q)
        rows.append(
            {
                C.MESSAGES: [
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": f"<think>{step_text(step)}</think>\\boxed{{{step.result}}}"},
                ]
            }
        )
    return rows


def min_chain_steps(items: list[int]) -> list[Step]:
    """The local chain of ``min(items)``: one ``min(acc,x)=r`` step per further item."""
    acc, steps = items[0], []
    for right in items[1:]:
        steps.append(Step(acc, "min", right, min(acc, right)))
        acc = min(acc, right)
    return steps


def base_chain_corpus(num: int, seed: int = 0, min_steps: int = 2, max_steps: int = 4) -> list[dict]:
    """Multi-step chains of a pretraining-only family, ``min(3,7,2)`` ->
    ``<think>min(3,7)=3;min(3,2)=2</think>\\boxed{2}``, as chat ``messages`` rows.

    Why the base student sees them: a pretrained language model arrives knowing how to work step by step,
    restating the operands it needs (induction/copying); a ~1M-parameter student trained on single-step
    facts alone does not, and learns that skill during distillation in a sudden jump somewhere between
    ~1,000 and ~2,000 optimizer steps whose timing depends on the base's initialisation (docs/ablation.md).
    With these chains in its pretraining it learns 2-3-step arith chains in ~500 steps. ``min`` is in no
    question family, suite or teacher: distillation still has to teach the arithmetic chains (2-3-step
    accuracy stays at chance before it), and the out-of-domain ``max`` suite stays a procedure the base
    has only seen as single steps.
    """
    rng = random.Random(f"base-chains:{seed}")
    rows = []
    for _ in range(num):
        items = [rng.randrange(10) for _ in range(rng.randint(min_steps, max_steps) + 1)]
        steps = min_chain_steps(items)
        rows.append(
            {
                C.MESSAGES: [
                    {"role": "user", "content": "min(" + ",".join(map(str, items)) + ")"},
                    {"role": "assistant", "content": "<think>" + ";".join(map(step_text, steps))
                     + f"</think>\\boxed{{{steps[-1].result}}}"},
                ]
            }
        )
    return rows
