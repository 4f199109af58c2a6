"""Scripted teacher personas: deterministic writers of ``<think>…</think>\\boxed{N}`` solutions for the
synthetic task families, each with its own style, so that teacher selection, filtering and diversity
selection have something real to decide.

    text = write_solution("concise", "9+0-9", seed=3)   # '<think>9+0=9;9-9=0</think>\\boxed{0}'

- ``concise``: a consistent *local* chain of thought (each step restates its operands right before its
  result); seeds vary the surface (an optional recap) but never the structure; ~5% of the
  samples carry an arithmetic slip, so its own accuracy is not the best.
- ``verbose``: always correct but inconsistent: each sample in one of four forms (local, rewrite,
  wordy, results-only). Highest own accuracy, hardest for a tiny student to learn from.
- ``sloppy``: concise-like with frequent slips (~30% wrong final answers), flawed chains that still
  reach the right answer (~40% of the rest: the grader keeps them, the student learns wrong steps from
  them; only the smoke test sees it) and an occasionally missing ``</think>``.
- ``strategies``: always correct and always local, but each sample follows one of three genuinely
  different *orders of work* (:data:`STRATEGIES`): left to right; all additions first, then the
  subtractions; all subtractions first, then the additions (mod-10 addition commutes, so every order
  reaches the same answer; see :func:`strategy_steps`). Samples of a question differ in the procedure,
  not the surface, so diversity selection (P distinct trajectories per question) has something real to
  choose: a student trained on two orders has seen each operand fetched from more places. ``max``
  questions are solved left to right and right to left.
- ``rambling``: ``concise``'s chain after a long re-checking preamble whose length is long-tailed
  (log-normal, median ~600 characters, 1 in 100 over ~6,000): reasoning-length traces for scale
  benchmarks (``benchmarks/scale.py``), not a teacher to learn from.

The same ``(persona, question, seed)`` always gives the same text (string-seeded ``random.Random``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

from ray_distill.synthetic.tasks import Step, solve_steps, step_text

CONCISE_ERROR_RATE = 0.05
SLOPPY_ERROR_RATE = 0.30
SLOPPY_UNCLOSED_RATE = 0.10
SLOPPY_FLAWED_RATE = 0.40  # of the samples with a right answer: a wrong intermediate step

_OPS: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: (a + b) % 10,
    "-": lambda a, b: (a - b) % 10,
    "max": max,
}
_WORDS = {"+": "plus", "-": "minus"}


def _finish(body: str, answer: int, close: bool = True) -> str:
    return f"<think>{body}{'</think>' if close else ''}\\boxed{{{answer}}}"


def _slip(steps: list[Step], rng: random.Random) -> list[Step]:
    """The chain with one wrong step result, carried through the later steps; the final answer is
    guaranteed wrong (a slip that the rest of the chain happens to absorb is moved to the last step)."""
    truth = steps[-1].result
    i = rng.randrange(len(steps))
    out = list(steps[:i])
    acc = (steps[i].result + rng.randrange(1, 10)) % 10
    out.append(replace(steps[i], result=acc))
    for s in steps[i + 1 :]:
        acc = _OPS[s.op](acc, s.right)
        out.append(Step(out[-1].result, s.op, s.right, acc))
    if out[-1].result == truth:
        out[-1] = replace(out[-1], result=(truth + rng.randrange(1, 10)) % 10)
    return out


def _local_chain(steps: list[Step], rng: random.Random) -> str:
    """Local steps joined by ';', with an optional closing recap of the result (the one surface
    variation: samples of a question differ, the procedure never does)."""
    body = ";".join(step_text(s) for s in steps)
    if rng.random() < 0.5:
        body += f";so {steps[-1].result}"
    return body


def _rewrite_form(steps: list[Step]) -> str:
    """``9+0-9=9-9=0`` / ``max(3,7,2)=max(7,2)=7``: the expression shrinks one operation at a time."""
    if steps[0].op == "max":
        rights = [s.right for s in steps]
        parts = [f"max({','.join(str(x) for x in [s.left, *rights[k:]])})" for k, s in enumerate(steps)]
    else:
        parts = [str(s.left) + "".join(f"{t.op}{t.right}" for t in steps[k:]) for k, s in enumerate(steps)]
    return "=".join([*parts, str(steps[-1].result)])


def _wordy_form(steps: list[Step], rng: random.Random) -> str:
    """``9 plus 0 gives 9, then 9 minus 9 gives 0`` with varied connectives."""
    clauses = []
    for s in steps:
        if s.op == "max":
            clauses.append(f"the larger of {s.left} and {s.right} is {s.result}")
        else:
            clauses.append(f"{s.left} {_WORDS[s.op]} {s.right} {rng.choice(['gives', 'is', 'makes'])} {s.result}")
    text = clauses[0]
    for c in clauses[1:]:
        text += rng.choice([", then ", ", next ", " and then "]) + c
    return text


def _results_only(steps: list[Step]) -> str:
    return ";".join(str(s.result) for s in steps)


def concise(question: str, rng: random.Random) -> str:
    steps = solve_steps(question)
    if rng.random() < CONCISE_ERROR_RATE:
        steps = _slip(steps, rng)
    return _finish(_local_chain(steps, rng), steps[-1].result)


def verbose(question: str, rng: random.Random) -> str:
    steps = solve_steps(question)
    form = rng.choice(["local", "rewrite", "wordy", "results"])
    if form == "local":
        body = ";".join(step_text(s) for s in steps)
    elif form == "rewrite":
        body = _rewrite_form(steps)
    elif form == "wordy":
        body = _wordy_form(steps, rng)
    else:
        body = _results_only(steps)
    return _finish(body, steps[-1].result)


def _flawed(steps: list[Step], rng: random.Random) -> list[Step]:
    """Right answer, wrong reasoning: one step's written result is wrong while the chain goes on from
    the true value, so the final answer still passes the grader (which checks only the answer)."""
    i = rng.randrange(len(steps))
    out = list(steps)
    out[i] = replace(steps[i], result=(steps[i].result + rng.randrange(1, 10)) % 10)
    return out


def sloppy(question: str, rng: random.Random) -> str:
    steps = solve_steps(question)
    truth = steps[-1].result
    if rng.random() < SLOPPY_ERROR_RATE:
        steps = _slip(steps, rng)
        truth = steps[-1].result
    elif rng.random() < SLOPPY_FLAWED_RATE:
        steps = _flawed(steps, rng)
    close = rng.random() >= SLOPPY_UNCLOSED_RATE
    return _finish(_local_chain(steps, rng), truth, close=close)


STRATEGIES = ("in_order", "plus_first", "minus_first")


def strategy_steps(question: str, strategy: str) -> list[Step]:
    """The local steps of ``question`` in the order of work of ``strategy`` (pure).

    ``in_order`` is :func:`~ray_distill.synthetic.tasks.solve_steps`. For arith chains, ``plus_first``
    starts from the first operand, applies every ``+d`` in question order and then every ``-d``;
    ``minus_first`` the other way round. Addition mod 10 commutes, so the last result is always the
    answer; for a chain of one sign all three orders coincide. For ``max`` the two reorderings both
    mean right to left (max is commutative too)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {list(STRATEGIES)}")
    steps = solve_steps(question)
    if strategy == "in_order":
        return steps
    if steps[0].op == "max":
        operands = [s.right for s in reversed(steps)] + [steps[0].left]
        ops = [("max", d) for d in operands[1:]]
    else:
        first = "+" if strategy == "plus_first" else "-"
        ops = [(s.op, s.right) for s in steps if s.op == first] + [(s.op, s.right) for s in steps if s.op != first]
        operands = [steps[0].left]
    acc, out = operands[0], []
    for op, right in ops:
        result = _OPS[op](acc, right)
        out.append(Step(acc, op, right, result))
        acc = result
    return out


def strategies(question: str, rng: random.Random) -> str:
    steps = strategy_steps(question, rng.choice(STRATEGIES))
    return _finish(";".join(step_text(s) for s in steps), steps[-1].result)


RAMBLING_MEDIAN_CHARS, RAMBLING_SIGMA = 600, 1.0  # log-normal preamble length: P99 ~ 600 * e^2.33 ~ 6,200


def rambling(question: str, rng: random.Random) -> str:
    steps = solve_steps(question)
    target = int(RAMBLING_MEDIAN_CHARS * rng.lognormvariate(0.0, RAMBLING_SIGMA))
    checks, total = [], 0
    while total < target:
        s = rng.choice(steps)
        clause = f"check {step_text(s)} again: {s.left}{s.op}{s.right} is {s.result}, yes. "
        checks.append(clause)
        total += len(clause)
    return _finish("".join(checks) + _local_chain(steps, rng), steps[-1].result)


PERSONAS: dict[str, Callable[[str, random.Random], str]] = {
    "concise": concise,
    "verbose": verbose,
    "sloppy": sloppy,
    "rambling": rambling,
    "strategies": strategies,
}


def write_solution(persona: str, question: str, seed: int) -> str:
    """One solution of ``question`` in the style of ``persona``; deterministic in ``seed``.

    Raises ``ValueError`` for an unknown persona or a question of no synthetic family.
    """
    if persona not in PERSONAS:
        raise ValueError(f"unknown teacher persona {persona!r}; known: {sorted(PERSONAS)}")
    return PERSONAS[persona](question, random.Random(f"{persona}:{question}:{seed}"))
