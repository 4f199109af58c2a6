"""The dev suite (pure): the questions every selection step scores on — the smoke test's ranking, the
Tune objective — held out of training and disjoint from the eval suites that a job reports.

    train, dev = carve(pool, 200, seed=0)   # 200 questions chosen by a seeded hash of their ids

A configured ``dev.suite`` is loaded like an eval suite; without one, :func:`carve` takes the dev
questions out of the (decontaminated) question pool. The choice depends only on the ids and the seed,
so every command (run, tune, ablate, the dry run) carves the same questions from the same pool.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from ray_distill import columns as C


def seeded_order(ids: Iterable[str], seed: int) -> list[str]:
    """``ids`` (deduplicated) in a deterministic pseudo-random order: by SHA-256 of ``"<seed>:<id>"``.
    A subset keeps the order it has in the whole, so choices made by it overlap where they can."""
    return sorted(set(ids), key=lambda i: (hashlib.sha256(f"{seed}:{i}".encode()).hexdigest(), i))


def seeded_sample(pool: list[dict], n: int | None, seed: int) -> list[dict]:
    """``n`` questions of ``pool`` chosen by :func:`seeded_order` of their ids (all of them when ``n`` is None or
    at least the pool), in pool order: a sample that does not depend on the file's order (the smoke test's probe,
    ``selection.max_questions``). A larger ``n`` with the same seed keeps every question a smaller one chose."""
    if n is None or n >= len(pool):
        return list(pool)
    chosen = set(seeded_order((str(q[C.QUESTION_ID]) for q in pool), seed)[:n])
    return [q for q in pool if str(q[C.QUESTION_ID]) in chosen]


def probe_questions(cfg, pool: list[dict]) -> list[dict]:
    """The smoke test's probe of a job (``JobConfig``): ``smoke_test.probe_questions`` of the pool, a seeded sample
    (the job's seed). The one definition the job, the ablation and the data-budget search use."""
    return seeded_sample(pool, cfg.smoke_test.probe_questions, cfg.seed)


def capped_questions(cfg, kept: list[dict]) -> list[dict]:
    """The questions of a job (``JobConfig``) that go on to teacher sampling: ``selection.max_questions`` of the
    kept ones, a seeded sample (all of them without a cap). Shared by the job and its Tune trials, so that a
    best job rebuilds the trial's corpus."""
    return seeded_sample(kept, cfg.selection.max_questions, cfg.seed)


def carve(pool: list[dict], n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(the pool without the dev questions, the ``n`` dev questions), both in pool order. Raises
    ``ValueError`` when the pool has no more than ``n`` questions (nothing would be left to train on)."""
    if len(pool) <= n:
        raise ValueError(f"carving {n} dev questions out of a pool of {len(pool)} leaves nothing to train on")
    chosen = set(seeded_order((str(q[C.QUESTION_ID]) for q in pool), seed)[:n])
    if len(chosen) < n:
        raise ValueError(f"the question pool has duplicate ids: {len(chosen)} distinct ids among the first {n}")
    return ([q for q in pool if str(q[C.QUESTION_ID]) not in chosen],
            [q for q in pool if str(q[C.QUESTION_ID]) in chosen])
