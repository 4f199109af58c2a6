"""Question files: read and validate ``.jsonl``/``.json`` (JSON lines) and ``.parquet`` on any fsspec URL.

    rows, rejects = read_questions("s3://bucket/math.jsonl")
    write_rows(rejects, "outputs/job/rejects/questions.jsonl")

Schema (``ray_distill.columns.QUESTION_COLUMNS``): ``question`` is required, and ``answer`` or
``tests`` (or both): ``answer`` is a non-empty string (numbers are coerced; "" in code rows without
one), ``tests`` the test cases of a code question, normalised by :func:`normalize_tests` to one
canonical JSON string ("" in math rows). ``question_id`` defaults to a stable hash of the question
text, ``family`` to the file stem, ``difficulty`` to -1. Other fields are ignored (logged).

Accepted ``tests`` shapes (a JSON string holding one of them is accepted too, as parquet/hub data
sets often store them):

- stdin/stdout: ``[{"input": "1 2\\n", "output": "3\\n"}, ...]`` (``testtype: "stdin"`` is allowed);
- APPS/TACO: ``{"inputs": [...], "outputs": [...], "fn_name": optional}``: without ``fn_name`` each
  input/output is a string (or a list of lines); with it, each input is the argument list;
- function call: ``{"fn_name": "f", "cases": [{"args": [...], "expected": ...}, ...]}``.

The canonical form is ``{"type": "stdio", "cases": [{"input", "output"}]}`` or
``{"type": "call", "fn_name", "cases": [{"args", "expected"}]}`` (see ``curation.sandbox``).

A bad row is not fatal: it goes to the rejects list as ``{"file", "line", "reason", "raw"}`` (``line``
is 1-based: the line of a JSON-lines file, the row of a parquet file; ``reason`` is
``"<code>: <detail>"``). A file that cannot be read at all (missing, not UTF-8, not parquet, no valid
row) raises :class:`DataError` with a one-line message naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from ray_distill import columns as C

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
_RAW_CHARS = 2000  # rejects keep at most this much of the offending line

# Reject reason codes (stable: they are counted in logs and MLflow).
R_INVALID_JSON = "invalid_json"
R_NOT_OBJECT = "not_an_object"
R_MISSING = "missing_field"
R_EMPTY = "empty_field"
R_TYPE = "wrong_type"
R_DUPLICATE = "duplicate_id"
R_TESTS = "invalid_tests"


class DataError(ValueError):
    """A data file cannot be read at all; ``str(err)`` is a one-line message naming the file."""


class RowError(ValueError):
    """One row is invalid; ``str(err)`` is its reject reason."""


def question_hash(question: str) -> str:
    """The default ``question_id``: first 16 hex digits of the SHA-1 of the question text."""
    return hashlib.sha1(question.encode("utf-8")).hexdigest()[:16]


def file_kind(path: str) -> str:
    """``"jsonl"`` or ``"parquet"`` from the extension (a compression suffix such as ``.gz`` is skipped)."""
    name = path.rsplit("/", 1)[-1].lower()
    for suffix in _COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise DataError(f"{path}: unsupported file type (expected one of {JSONL_SUFFIXES + PARQUET_SUFFIXES})")


def file_stem(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    for suffix in _COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    return name.rsplit(".", 1)[0] if "." in name else name


def read_questions(path: str) -> tuple[list[dict], list[dict]]:
    """Read a question file; return ``(valid rows, rejects)``. Raises :class:`DataError` when the
    file is unreadable or holds no valid row."""
    kind = file_kind(path)
    records = _jsonl_records(path) if kind == "jsonl" else _parquet_records(path)
    rows, rejects = validate_records(records, path)
    if not rows:
        first = f"; first reject: line {rejects[0]['line']}: {rejects[0]['reason']}" if rejects else ""
        raise DataError(f"{path}: no valid question rows ({len(rejects)} rejected){first}")
    if rejects:
        logger.warning("%s: %d valid question rows, %d rejected", path, len(rows), len(rejects))
    else:
        logger.info("%s: %d question rows", path, len(rows))
    return rows, rejects


def validate_records(records: Iterable[tuple[int, str, Any]], path: str) -> tuple[list[dict], list[dict]]:
    """Validate ``(line, raw text, parsed object | RowError)`` records into rows and rejects."""
    rows: list[dict] = []
    rejects: list[dict] = []
    first_line: dict[str, int] = {}
    ignored: set[str] = set()
    stem = file_stem(path)
    for line, raw, obj in records:
        try:
            if isinstance(obj, RowError):
                raise obj
            row = normalize_row(obj, default_family=stem)
            qid = row[C.QUESTION_ID]
            if qid in first_line:
                raise RowError(f"{R_DUPLICATE}: question_id {qid!r} already at line {first_line[qid]}")
        except RowError as err:
            rejects.append({"file": path, "line": line, "reason": str(err), "raw": raw[:_RAW_CHARS]})
            continue
        first_line[qid] = line
        ignored.update(set(obj) - set(C.QUESTION_COLUMNS))
        rows.append(row)
    if ignored:
        logger.info("%s: ignoring fields %s", path, sorted(ignored))
    return rows, rejects


def normalize_row(obj: Any, default_family: str) -> dict:
    """One raw record -> a question row, or :class:`RowError` with the reason."""
    if not isinstance(obj, dict):
        raise RowError(f"{R_NOT_OBJECT}: got {type(obj).__name__}")
    question = _text(obj, C.QUESTION, required=True)
    tests = "" if _is_missing(obj.get(C.TESTS)) else normalize_tests(obj[C.TESTS])
    answer = _text(obj, C.ANSWER, required=not tests) or ""
    return {
        C.QUESTION_ID: _text(obj, C.QUESTION_ID, required=False) or question_hash(question),
        C.QUESTION: question,
        C.ANSWER: answer,
        C.FAMILY: _text(obj, C.FAMILY, required=False) or default_family,
        C.DIFFICULTY: _difficulty(obj),
        C.TESTS: tests,
    }


def normalize_tests(value: Any) -> str:
    """Any accepted ``tests`` shape -> the canonical JSON string, or :class:`RowError` naming the problem."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise RowError(f"{R_TESTS}: 'tests' is a string but not JSON ({err.msg})") from None
    if isinstance(value, list):
        canonical = {"type": "stdio", "cases": [_stdio_case(c, i) for i, c in enumerate(value)]}
    elif isinstance(value, dict) and value.get("type") in ("stdio", "call"):  # already canonical
        canonical = _canonical_again(value)
    elif isinstance(value, dict) and "inputs" in value:
        canonical = _apps_tests(value)
    elif isinstance(value, dict) and "cases" in value:
        canonical = {"type": "call", "fn_name": _fn_name(value), "cases": [_call_case(c, i) for i, c in
                                                                           enumerate(_list(value, "cases"))]}
    else:
        raise RowError(f"{R_TESTS}: expected a list of {{input, output}}, {{inputs, outputs[, fn_name]}} or "
                       f"{{fn_name, cases}}, got {type(value).__name__}")
    if not canonical["cases"]:
        raise RowError(f"{R_EMPTY}: 'tests' has no test case")
    return json.dumps(canonical, ensure_ascii=False, sort_keys=True)


def parse_tests(text: str) -> dict:
    """The canonical ``tests`` string of a row -> its dict (as :func:`normalize_tests` wrote it)."""
    return json.loads(text)


def _canonical_again(value: dict) -> dict:
    cases = _list(value, "cases")
    if value["type"] == "stdio":
        return {"type": "stdio", "cases": [_stdio_case(c, i) for i, c in enumerate(cases)]}
    return {"type": "call", "fn_name": _fn_name(value), "cases": [_call_case(c, i) for i, c in enumerate(cases)]}


def _apps_tests(value: dict) -> dict:
    inputs, outputs = _list(value, "inputs"), _list(value, "outputs")
    if len(inputs) != len(outputs):
        raise RowError(f"{R_TESTS}: 'tests' has {len(inputs)} inputs but {len(outputs)} outputs")
    if _is_missing(value.get("fn_name")) or value.get("fn_name") == "":
        return {"type": "stdio", "cases": [_stdio_case({"input": i, "output": o}, n)
                                           for n, (i, o) in enumerate(zip(inputs, outputs))]}
    return {"type": "call", "fn_name": _fn_name(value),
            "cases": [_call_case({"args": i, "expected": o}, n) for n, (i, o) in enumerate(zip(inputs, outputs))]}


def _stdio_case(case: Any, i: int) -> dict:
    if not isinstance(case, dict) or "input" not in case or "output" not in case:
        raise RowError(f"{R_TESTS}: tests[{i}] must be an object with 'input' and 'output'")
    if case.get("testtype", "stdin") != "stdin":
        raise RowError(f"{R_TESTS}: tests[{i}] has testtype {case['testtype']!r}; use {{fn_name, cases}} for calls")
    return {"input": _lines(case["input"], i, "input"), "output": _lines(case["output"], i, "output")}


def _call_case(case: Any, i: int) -> dict:
    if not isinstance(case, dict) or "args" not in case or "expected" not in case:
        raise RowError(f"{R_TESTS}: tests case {i} must be an object with 'args' and 'expected'")
    if not isinstance(case["args"], list):
        raise RowError(f"{R_TESTS}: tests case {i}: 'args' must be a list of arguments, got {type(case['args']).__name__}")
    return {"args": case["args"], "expected": case["expected"]}


def _lines(value: Any, i: int, key: str) -> str:
    """A stdin/stdout text: a string, or a list of lines joined with newlines."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    raise RowError(f"{R_TESTS}: tests case {i}: {key!r} must be a string or a list of lines, got {type(value).__name__}")


def _list(value: dict, key: str) -> list:
    items = value.get(key)
    if not isinstance(items, list):
        raise RowError(f"{R_TESTS}: 'tests.{key}' must be a list, got {type(items).__name__}")
    return items


def _fn_name(value: dict) -> str:
    name = value.get("fn_name")
    if not isinstance(name, str) or not name.isidentifier():
        raise RowError(f"{R_TESTS}: 'tests.fn_name' must be a Python identifier, got {name!r}")
    return name


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(obj: dict, key: str, required: bool) -> str | None:
    value = obj.get(key)
    if _is_missing(value):
        if required:
            raise RowError(f"{R_MISSING}: {key!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(f"{R_TYPE}: {key!r} must be a string, got {type(value).__name__}")
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        if required:
            raise RowError(f"{R_EMPTY}: {key!r}")
        return None
    return text


def _difficulty(obj: dict) -> int:
    value = obj.get(C.DIFFICULTY)
    if _is_missing(value):
        return -1
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():  # parquet int columns with nulls arrive as float
        return int(value)
    raise RowError(f"{R_TYPE}: 'difficulty' must be an integer, got {value!r}")


def _jsonl_records(path: str) -> Iterator[tuple[int, str, Any]]:
    """Yield ``(line, raw, object | RowError)`` for every non-blank line; DataError if unreadable."""
    try:
        with fsspec.open(path, "rb", compression="infer") as f:
            for line, raw_bytes in enumerate(f, start=1):
                raw = _decode(raw_bytes, path, line)
                if not raw.strip():
                    continue
                try:
                    obj: Any = json.loads(raw)
                except json.JSONDecodeError as err:
                    _refuse_json_array(raw, path, line)
                    obj = RowError(f"{R_INVALID_JSON}: {err.msg} (column {err.colno})")
                yield line, raw.rstrip("\r\n"), obj
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (IsADirectoryError, PermissionError, EOFError) as err:
        raise DataError(f"{path}: cannot read ({type(err).__name__})") from None
    except OSError as err:  # e.g. a corrupt .gz
        raise DataError(f"{path}: cannot read ({_first_line(err)})") from None


def _decode(raw: bytes, path: str, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        byte = raw[err.start : err.start + 1].hex()
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte 0x{byte} at column {err.start + 1})") from None


def _refuse_json_array(raw: str, path: str, line: int) -> None:
    if line == 1 and raw.lstrip().startswith("[") and not raw.rstrip().endswith("]"):
        raise DataError(f"{path}: looks like a JSON array; expected JSON lines (one object per line)")


def _parquet_records(path: str) -> Iterator[tuple[int, str, Any]]:
    try:
        with fsspec.open(path, "rb") as f:
            table = pq.read_table(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable parquet file ({_first_line(err)})") from None
    for i, obj in enumerate(table.to_pylist(), start=1):
        yield i, json.dumps(obj, ensure_ascii=False, default=str), obj


def write_rows(rows: Iterable[dict], path: str) -> str:
    """Write rows as JSON lines (``.jsonl``/``.json``) or parquet by extension, creating parent dirs."""
    rows = list(rows)
    kind = file_kind(path)
    fs, fs_path = fsspec.core.url_to_fs(path)
    parent = fs._parent(fs_path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if kind == "parquet":
        table = pa.Table.from_pylist([_plain(r) for r in rows])
        with fsspec.open(path, "wb") as f:
            pq.write_table(table, f)
    else:
        with fsspec.open(path, "wt", encoding="utf-8", compression="infer") as f:
            for row in rows:
                f.write(json.dumps(_plain(row), ensure_ascii=False, allow_nan=False) + "\n")
    logger.debug("wrote %d rows to %s", len(rows), path)
    return path


def _plain(value: Any) -> Any:
    """Numpy/pandas values -> plain Python (NaN -> None) so JSON and pyarrow accept them."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and scalars
        return _plain(value.tolist())
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
