"""Question sources: a file on any fsspec URL (``hf://datasets/<org>/<name>/<file>`` included, through
huggingface_hub's fsspec file system) read through its ``fields:``/``answer_from``/preset mapping
(``data.benchmarks``), or the built-in synthetic world; plus decontamination."""

from __future__ import annotations

import logging
import re

from ray_distill import columns as C
from ray_distill.config import ConfigError, QuestionsConfig, SuiteConfig

logger = logging.getLogger(__name__)

DEFAULT_NGRAM = 13  # word n-gram size of the overlap check (GPT-3's decontamination used 13)
MATCHED_NGRAMS = "matched_ngrams"  # rejects column: {suite: the overlapping text}
_WORD = re.compile(r"\w+|[^\w\s]")


def load_source(source: QuestionsConfig | SuiteConfig, exclude: set[str] | None = None,
                where: str | None = None) -> tuple[list[dict], list[dict]]:
    """(valid rows, rejected rows) of a question source, each row with its ``prompt`` (the question through
    the source's prompt template); synthetic sources never reject. ``where`` names the source's config key
    in errors (default: ``questions`` or ``eval.suites[<name>]``)."""
    from ray_distill.data.benchmarks import answer_format, prompt_template

    rows, rejects = _load_rows(source, exclude, where or _where(source))
    template, fmt = prompt_template(source), answer_format(source)
    extra = {C.ANSWER_FORMAT: fmt} if fmt else {}
    return [{**r, C.PROMPT: render_question(template, r[C.QUESTION], r[C.FAMILY]), **extra} for r in rows], rejects


def render_question(template: str | dict[str, str] | None, question: str, family: str) -> str:
    """The user message for ``question``: its family's template (or the ``default`` one) with
    ``{question}`` replaced; the question itself when no template applies."""
    if isinstance(template, dict):
        template = template.get(family, template.get("default"))
    return question if template is None else template.replace("{question}", question)


def _load_rows(source: QuestionsConfig | SuiteConfig, exclude: set[str] | None,
               where: str) -> tuple[list[dict], list[dict]]:
    if source.synthetic is not None:
        from ray_distill.synthetic.tasks import make_questions

        s = source.synthetic
        try:
            rows = make_questions(s.family, s.num_questions, s.min_difficulty, s.max_difficulty, s.seed, exclude=exclude)
        except ValueError as err:  # an impossible request is a configuration error, not a crash
            raise ConfigError(f"{where}.synthetic: {err}") from None
        return [{C.TESTS: "", **r} for r in rows], []  # synthetic questions are math: no tests
    from ray_distill.data.benchmarks import row_mapping
    from ray_distill.data.questions import FieldError, read_questions

    try:
        return read_questions(source.path, row_mapping(source))
    except FieldError as err:  # the mapping is configuration: name its key
        raise ConfigError(f"{where}.{err}") from None


def _where(source: QuestionsConfig | SuiteConfig) -> str:
    return f"eval.suites[{source.name}]" if isinstance(source, SuiteConfig) else "questions"


def decontaminate(
    pool: list[dict], suites: dict[str, list[dict]], ngram: int | None = DEFAULT_NGRAM
) -> tuple[list[dict], list[dict], dict[str, int]]:
    """Drop training questions that overlap an evaluation suite question.

    Overlap: the same normalised text, or (with ``ngram`` = n) a shared word n-gram. Texts are split
    into lower-cased words and punctuation marks (``9+0-9`` is five words; spacing does not matter).
    Each question's grams are its word k-grams with k = min(n, its length): a question shorter than n
    words is a single gram, itself. So long questions match on any shared n-gram, and a short one
    matches only a word-for-word equal question, never a longer one that merely contains it (the
    evaluation question ``4-2`` does not contaminate the training question ``6-9+4-2``), which keeps
    tiny synthetic questions sensible. ``ngram=None`` checks exact matches only.

    Returns (kept, rejected, contaminated count per suite). A rejected row is the training row plus
    ``reason`` ``"contaminated:<suite>[,<suite>...]"`` and ``matched_ngrams``: ``{suite: matched text}``.
    """
    index = {name: _suite_index(rows, ngram) for name, rows in suites.items()}
    kept, rejected, counts = [], [], {name: 0 for name in suites}
    for row in pool:
        hits = {name: m for name, idx in index.items() if (m := _find(row[C.QUESTION], idx, ngram)) is not None}
        for name in hits:
            counts[name] += 1
        if hits:
            rejected.append({**row, C.REASON: f"contaminated:{','.join(hits)}", MATCHED_NGRAMS: hits})
        else:
            kept.append(row)
    if rejected:
        logger.info("decontamination: removed %d of %d training questions %s", len(rejected), len(pool), counts)
    return kept, rejected, counts


def word_grams(text: str, n: int) -> list[tuple[str, ...]]:
    """The word k-grams of ``text``, k = min(n, number of words), in order."""
    words = tuple(_WORD.findall(text.lower()))
    k = min(n, len(words))
    return [words[i : i + k] for i in range(len(words) - k + 1)] if k else []


def _suite_index(rows: list[dict], n: int | None) -> tuple[set[str], set[tuple[str, ...]]]:
    """(normalised texts, word grams) of one evaluation suite."""
    grams = {g for r in rows for g in word_grams(r[C.QUESTION], n)} if n is not None else set()
    return {_norm(r[C.QUESTION]) for r in rows}, grams


def _find(text: str, index: tuple[set[str], set[tuple[str, ...]]], n: int | None) -> str | None:
    """The matching text (the whole normalised question, or the first shared gram), or None."""
    exact, grams = index
    if _norm(text) in exact:
        return _norm(text)
    if n is not None:
        for gram in word_grams(text, n):
            if gram in grams:
                return " ".join(gram)
    return None


def _norm(text: str) -> str:
    """A question's normalised text: its lower-cased words and punctuation marks (spacing does not matter)."""
    return " ".join(_WORD.findall(text.lower()))
