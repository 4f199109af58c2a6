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
