"""Base-knowledge replay: rows the student already knew, added to a distillation's training rows so that it
keeps what it knew outside the distilled domain (``replay`` in the job config).

    rows, figures = training_rows(cfg, corpus)     # corpus + round(N x f / (1 - f)) replayed rows

Distilling one procedure into a small student overwrites the others it knew: in the built-in world every
arith distillation that learns its chains takes the base's 2-3-step ``max`` skill from ~0.6 to ~0.1-0.2,
and replacing 10% of the rows with the base's own single-step facts kept 0.34 (docs/ablation.md,
"Out-of-domain forgetting"). A synthetic student replays the first rows of its own pretraining corpus
(the rows it was pretrained on); a real student replays ``replay.source``, e.g. general instruction data.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from ray_distill import columns as C
from ray_distill.config import JobConfig

logger = logging.getLogger(__name__)

BASE_FACTS = "base_facts"  # the source name of a synthetic student's own pretraining rows


def replay_count(corpus_rows: int, fraction: float) -> int:
    """Replayed rows for a corpus of ``corpus_rows``: ``fraction`` of the training rows (corpus + replay)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"replay fraction must be in [0, 1), got {fraction}")
    return round(corpus_rows * fraction / (1.0 - fraction))


def replay_rows(cfg: JobConfig, count: int) -> list[dict]:
    """``count`` chat rows to replay: a seeded shuffle of ``replay.source`` (cycled, with a warning, when it has
    fewer rows), or a synthetic student's first ``count`` pretraining facts."""
    if count == 0:
        return []
    r = cfg.replay
    if r.source is None:
        from ray_distill.synthetic.tasks import base_corpus

        return base_corpus(count, seed=cfg.seed)  # the same generator as the base's pretraining: its first rows
    rows = _source_rows(r.source)
    if count > len(rows):
        logger.warning("replay.source %s has %d rows; %d are replayed, so some appear more than once",
                       r.source, len(rows), count)
    order = np.random.default_rng(r.seed).permutation(len(rows))
    return [{C.MESSAGES: rows[order[i % len(rows)]][C.MESSAGES]} for i in range(count)]


@functools.lru_cache(maxsize=4)
def _source_rows(url: str) -> list[dict]:
    """``replay.source`` read once per process: an ablation trains every arm of every seed with it."""
    from ray_distill.data.corpus import read_corpus

    return read_corpus(url)


def training_rows(cfg: JobConfig, corpus: list[dict]) -> tuple[list[dict], dict]:
    """The rows a distillation trains on (the corpus, then the replayed rows) and what was replayed."""
    count = replay_count(len(corpus), cfg.replay.fraction)
    figures = {"replay_rows": count, "replay_source": cfg.replay.source or BASE_FACTS} if count else {"replay_rows": 0}
    if count:
        logger.info("replaying %d rows of %s with the %d corpus rows (replay.fraction %.2f)", count,
                    figures["replay_source"], len(corpus), cfg.replay.fraction)
    return corpus + replay_rows(cfg, count), figures
