"""Question sources: a file on any fsspec URL or the built-in synthetic world, plus decontamination."""

from __future__ import annotations

import logging

from ray_distill import columns as C
from ray_distill.config import ConfigError, QuestionsConfig, SuiteConfig

logger = logging.getLogger(__name__)


def load_source(source: QuestionsConfig | SuiteConfig, exclude: set[str] | None = None) -> tuple[list[dict], list[dict]]:
    """(valid rows, rejected rows) of a question source; synthetic sources never reject."""
    if source.synthetic is not None:
        from ray_distill.synthetic.tasks import make_questions

        s = source.synthetic
        try:
            rows = make_questions(s.family, s.num_questions, s.min_difficulty, s.max_difficulty, s.seed, exclude=exclude)
        except ValueError as err:  # an impossible request is a configuration error, not a crash
            raise ConfigError(f"{_where(source)}.synthetic: {err}") from None
        return rows, []
    from ray_distill.data.questions import read_questions

    return read_questions(source.path)


def _where(source: QuestionsConfig | SuiteConfig) -> str:
    return f"eval.suites[{source.name}]" if isinstance(source, SuiteConfig) else "questions"


def decontaminate(pool: list[dict], suites: dict[str, list[dict]]) -> tuple[list[dict], list[dict], dict[str, int]]:
    """Drop training questions whose normalised text appears in any evaluation suite.

    Returns (kept, rejected rows with reasons, contaminated count per suite)."""
    norm = {name: {_norm(r[C.QUESTION]) for r in rows} for name, rows in suites.items()}
    kept, rejected, counts = [], [], {name: 0 for name in suites}
    for row in pool:
        hits = [name for name, texts in norm.items() if _norm(row[C.QUESTION]) in texts]
        for name in hits:
            counts[name] += 1
        if hits:
            rejected.append({**row, C.REASON: f"contaminated:{','.join(hits)}"})
        else:
            kept.append(row)
    return kept, rejected, counts


def _norm(text: str) -> str:
    return " ".join(text.lower().split())
