"""The curated SFT corpus: chat ``messages`` rows, a manifest, and rejects files (any fsspec URL).

    paths = write_corpus(selected_rows, "outputs/job/corpus")
    # {"parquet": ".../corpus.parquet", "jsonl": ".../corpus.jsonl", "manifest": ".../manifest.jsonl"}

``corpus.parquet`` / ``corpus.jsonl`` hold only ``messages`` (a list of ``{role, content}``, the
format TRL's ``SFTTrainer`` and LLaMA-Factory's sharegpt/openai loaders read) plus the ids
``question_id``, ``teacher``, ``sample_index``. ``manifest.jsonl`` has one line per corpus row with
the verdicts, pass rate and selection distance, for audit. ``write_corpus`` takes curated rows
(question + completion + verdicts) or rows already made by :func:`to_chat_row`. Rows are written sorted by
(question_id, teacher, sample_index), so the same selection gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from typing import Any

import pandas as pd

from ray_distill import columns as C
from ray_distill.data.questions import write_rows

logger = logging.getLogger(__name__)

CORPUS_PARQUET, CORPUS_JSONL, MANIFEST = "corpus.parquet", "corpus.jsonl", "manifest.jsonl"
KEY_COLUMNS = [C.QUESTION_ID, C.TEACHER, C.SAMPLE_INDEX]  # one corpus row per key
CORPUS_COLUMNS = [C.MESSAGES, *KEY_COLUMNS]
REQUIRED_COLUMNS = [*KEY_COLUMNS, C.QUESTION, C.COMPLETION]
OPTIONAL_METADATA = [C.PASS_RATE, C.SELECTION_DISTANCE]  # None when the stage did not run
VERDICT_COLUMNS = [C.FORMAT_OK, C.CORRECT, C.PREDICTED, C.REASON, C.NUM_TOKENS]  # None when absent
MANIFEST_COLUMNS = [*KEY_COLUMNS, *VERDICT_COLUMNS, *OPTIONAL_METADATA]


def to_chat_row(row: dict) -> dict:
    """A curated trajectory -> ``{messages, question_id, teacher, sample_index, pass_rate,
    selection_distance}`` plus the verdict columns (``format_ok, correct, predicted, reason,
    num_tokens``; None when the row has none), which the manifest records."""
    missing = [c for c in REQUIRED_COLUMNS if c not in row]
    if missing:
        raise KeyError(f"corpus row lacks columns {missing} (has {sorted(row)})")
    out: dict[str, Any] = {
        C.MESSAGES: [
            {"role": "user", "content": str(_prompt(row))},
            {"role": "assistant", "content": str(row[C.COMPLETION])},
        ],
        C.QUESTION_ID: str(row[C.QUESTION_ID]),
        C.TEACHER: str(row[C.TEACHER]),
        C.SAMPLE_INDEX: int(row[C.SAMPLE_INDEX]),
    }
    for col in OPTIONAL_METADATA:
        out[col] = _number_or_none(row.get(col))
    out.update(_verdicts(row))
    return out


def _prompt(row: dict) -> str:
    """The user message the teacher answered: the rendered prompt, or the question when there is none."""
    prompt = row.get(C.PROMPT)
    return row[C.QUESTION] if prompt is None or (isinstance(prompt, float) and prompt != prompt) else prompt


def write_corpus(rows: Iterable[dict] | pd.DataFrame, out_dir: str) -> dict[str, str]:
    """Write ``corpus.parquet``, ``corpus.jsonl`` and ``manifest.jsonl`` under ``out_dir``.

    Refuses duplicated (question_id, teacher, sample_index) keys. Returns ``{kind: path}``.
    """
    records = _records(rows)
    chat = sorted((r if C.MESSAGES in r else to_chat_row(r) for r in records), key=_key)
    _refuse_duplicates(chat)
    manifest = [{c: c_row.get(c) for c in MANIFEST_COLUMNS} for c_row in chat]
    corpus = [{k: c[k] for k in CORPUS_COLUMNS} for c in chat]
    base = out_dir.rstrip("/")
    paths = {
        "parquet": write_rows(corpus, f"{base}/{CORPUS_PARQUET}"),
        "jsonl": write_rows(corpus, f"{base}/{CORPUS_JSONL}"),
        "manifest": write_rows(manifest, f"{base}/{MANIFEST}"),
    }
    logger.info("corpus: %d rows, %d questions, sha256 %s -> %s", len(chat), len({c[C.QUESTION_ID] for c in chat}),
                corpus_sha256(chat), base)
    return paths


def corpus_sha256(rows: Iterable[dict] | pd.DataFrame) -> str:
    """Content hash of a corpus: sha256 of its ``corpus.jsonl`` rows (``messages`` and ids) in the
    written order (sorted by key), so two corpora hash the same exactly when they hold the same
    trajectories for the same prompts, whatever order or metadata they came with."""
    chat = sorted((r if C.MESSAGES in r else to_chat_row(r) for r in _records(rows)), key=_key)
    digest = hashlib.sha256()
    for row in chat:
        digest.update(json.dumps({k: row[k] for k in CORPUS_COLUMNS}, sort_keys=True).encode() + b"\n")
    return digest.hexdigest()


def write_rejects(rows: Iterable[dict] | pd.DataFrame, path: str) -> str:
    """Write rejected rows (jsonl or parquet by extension); each must carry a ``stage`` and a ``reason``.

    An empty list still writes the (empty) file, so "no rejects" is visible on disk.
    """
    records = _records(rows)
    for i, r in enumerate(records):
        if not r.get(C.STAGE) or not r.get(C.REASON):
            raise ValueError(f"reject row {i} needs non-empty {C.STAGE!r} and {C.REASON!r}: {_short(r)}")
    if records:
        stages = pd.Series([r[C.STAGE] for r in records]).value_counts().to_dict()
        logger.info("rejects: %d rows %s -> %s", len(records), stages, path)
    return write_rows(records, path)


def _records(rows: Iterable[dict] | pd.DataFrame) -> list[dict]:
    return rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)


def _key(chat: dict) -> tuple:
    return tuple(chat[c] for c in KEY_COLUMNS)


def _refuse_duplicates(chat: list[dict]) -> None:
    for prev, cur in zip(chat, chat[1:]):
        if _key(prev) == _key(cur):
            raise ValueError(f"duplicate corpus row {dict(zip(KEY_COLUMNS, _key(cur)))}")


def _verdicts(row: dict) -> dict:
    def conv(col: str, kind: type) -> Any:
        return None if _missing(row.get(col)) else kind(row[col])

    return {
        C.FORMAT_OK: conv(C.FORMAT_OK, bool),
        C.CORRECT: conv(C.CORRECT, bool),
        C.PREDICTED: conv(C.PREDICTED, str),
        C.REASON: conv(C.REASON, str),
        C.NUM_TOKENS: conv(C.NUM_TOKENS, int),
    }


def _missing(value: Any) -> bool:
    """None, NaN, pd.NA or NaT."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _number_or_none(value: Any) -> float | None:
    return None if _missing(value) else float(value)


def _short(row: dict, limit: int = 200) -> str:
    text = repr(row)
    return text if len(text) <= limit else text[:limit] + "..."
