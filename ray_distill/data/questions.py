"""Question files: read and validate ``.jsonl``/``.json`` (JSON lines) and ``.parquet`` on any fsspec URL
(``.csv`` too, read only).

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

Files laid out differently (public data sets: ``problem``/``solution``/``id``, ``input_output``, ...) are
read through a :class:`RowMapping`: ``fields`` names the file's column of each row field (explicit, or the
first present of a preset's candidates), ``answer_from="last_boxed"`` takes the reference answer from the
last ``\\boxed{}`` of a worked solution (:func:`last_boxed`), and ``prepare`` (a benchmark preset's hook,
see ``data.benchmarks``) may rebuild or reject a mapped record before it is validated. A mapped column the
file does not have at all raises :class:`FieldError` naming the file and the field. A UTF-8 byte order
mark at the start of a JSON-lines file is skipped.

A bad row is not fatal: it goes to the rejects list as ``{"file", "line", "reason", "raw"}`` (``line``
is 1-based: the line of a JSON-lines file, the row of a parquet file; ``reason`` is
``"<code>: <detail>"``). A file that cannot be read at all (missing, not UTF-8, not parquet, no valid
row) raises :class:`DataError` with a one-line message naming the file.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from ray_distill import columns as C
from ray_distill.data.fs import atomic_write
from ray_distill.errors import DataError, FieldError, RowError  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
CSV_SUFFIXES = (".csv",)  # read only (GPQA is published as CSV)
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
R_NO_BOXED = "no_boxed_answer"

# Columns that look like a question id: ignoring one silently would merge nothing and reject nothing.
_ID_LIKE = ("id", "ID", "Id", "unique_id", "problem_id", "task_id", "uid", "Record ID")




@dataclass(frozen=True)
class RowMapping:
    """How a file's records become question rows (see the module docstring).

    ``fields``: target -> column (``incorrect_answers``: a list of columns), each must exist in the file;
    ``defaults``: target -> candidate columns, the first the file has is used (a preset's layout);
    ``required``: targets that must resolve to a column; ``answer_from``: ``field`` or ``last_boxed``;
    ``prepare``: called on every mapped record (target names as keys), returns the record to validate or
    raises :class:`RowError` (the row is rejected with that reason)."""

    fields: Mapping[str, str | list[str]] = field(default_factory=dict)
    defaults: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    answer_from: str = "field"
    prepare: Callable[[dict], dict] | None = None


def last_boxed(text: str) -> str | None:
    """The content of the last well-formed ``\\boxed{...}`` (or ``\\fbox{...}``) of ``text``, nested and
    escaped braces included (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``); ``\\boxed 5`` -> ``5``.
    None when there is none, or it is empty."""
    found = None
    for m in _BOXED.finditer(text):
        content = _braced(text, m.end())
        if content is not None and content.strip():
            found = content.strip()
    return found


_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _braced(text: str, i: int) -> str | None:
    """The group opening at ``text[i]`` (after spaces): a ``{...}`` with balanced braces, or one
    space-separated token (``\\boxed 5``); None when unbalanced."""
    j = i
    while j < len(text) and text[j] == " ":
        j += 1
    if j >= len(text):
        return None
    if text[j] != "{":
        if j == i:  # "\boxedx": not a boxed command (the regex already refuses letters)
            return None
        token = re.match(r"[^\s$]+", text[j:])
        return token.group(0) if token else None
    depth, k = 0, j
    while k < len(text):
        c = text[k]
        if c == "\\":
            k += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[j + 1 : k]
        k += 1
    return None


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
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    raise DataError(f"{path}: unsupported file type (expected one of {JSONL_SUFFIXES + PARQUET_SUFFIXES + CSV_SUFFIXES})")


def file_stem(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    for suffix in _COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    return name.rsplit(".", 1)[0] if "." in name else name


def read_questions(path: str, mapping: RowMapping | None = None) -> tuple[list[dict], list[dict]]:
    """Read a question file; return ``(valid rows, rejects)``. Raises :class:`DataError` when the
    file is unreadable or holds no valid row, :class:`FieldError` when ``mapping`` names a column the
    file lacks."""
    kind = file_kind(path)
    records = list(_jsonl_records(path) if kind == "jsonl" else _table_records(path, kind))
    mapping = mapping or RowMapping()
    fields = resolve_fields(mapping, _columns(records), path)
    rows, rejects = validate_records(records, path, fields, mapping.answer_from, mapping.prepare)
    if not rows:
        first = f"; first reject: line {rejects[0]['line']}: {rejects[0]['reason']}" if rejects else ""
        raise DataError(f"{path}: no valid question rows ({len(rejects)} rejected){first}")
    if rejects:
        logger.warning("%s: %d valid question rows, %d rejected", path, len(rows), len(rejects))
    else:
        logger.info("%s: %d question rows", path, len(rows))
    return rows, rejects


def resolve_fields(mapping: RowMapping, columns: list[str], path: str) -> dict[str, str | list[str]]:
    """target -> column(s) of this file: the explicit ``fields`` (each must be a column of the file), then
    for the other targets the first of the ``defaults`` candidates the file has. :class:`FieldError`
    names the file and the field of a missing column, or of a ``required`` target left without one."""
    present = set(columns)
    shown = ", ".join(repr(c) for c in columns[:20]) + (", ..." if len(columns) > 20 else "")
    fields: dict[str, str | list[str]] = {}
    for target, column in mapping.fields.items():
        missing = [c for c in (column if isinstance(column, list) else [column]) if c not in present]
        if missing and columns:
            raise FieldError(target, f"fields.{target}: column {missing[0]!r} not in {path} (columns: {shown})")
        fields[target] = column
    for target, candidates in mapping.defaults.items():
        if target in fields:
            continue
        if target == "incorrect_answers":  # every candidate the file has, in order
            hits = [c for c in candidates if c in present]
            if hits:
                fields[target] = hits
            continue
        hit = next((c for c in candidates if c in present), None)
        if hit is not None:
            fields[target] = hit
    for target in mapping.required:
        if target not in fields and target not in present and columns:
            tried = mapping.defaults.get(target, ())
            raise FieldError(target, f"fields.{target}: {path} has no column for it (tried {list(tried) or [target]}; "
                             f"columns: {shown}); map one with fields: {{{target}: <column>}}")
    return fields


def _columns(records: list[tuple[int, str, Any]]) -> list[str]:
    """The keys of the file's objects, in order of first appearance."""
    seen: dict[str, None] = {}
    for _, _, obj in records:
        if isinstance(obj, dict):
            seen.update(dict.fromkeys(map(str, obj)))
    return list(seen)


def map_record(obj: dict, fields: Mapping[str, str | list[str]]) -> dict:
    """``obj`` with every mapped target set from its column (a list of columns gives a list of values)."""
    out = dict(obj)
    for target, column in fields.items():
        out[target] = [obj.get(c) for c in column] if isinstance(column, list) else obj.get(column)
    return out


def validate_records(records: Iterable[tuple[int, str, Any]], path: str,
                     fields: Mapping[str, str | list[str]] | None = None, answer_from: str = "field",
                     prepare: Callable[[dict], dict] | None = None) -> tuple[list[dict], list[dict]]:
    """Validate ``(line, raw text, parsed object | RowError)`` records into rows and rejects; ``fields``,
    ``answer_from`` and ``prepare`` as in :class:`RowMapping` (``fields`` already resolved). A repeated
    ``question_id`` is rejected (``duplicate_id``), the first occurrence kept."""
    fields = dict(fields or {})
    labels = {t: f"{c!r} (fields.{t})" for t, c in fields.items() if isinstance(c, str)}
    rows: list[dict] = []
    rejects: list[dict] = []
    first_line: dict[str, int] = {}
    ignored: set[str] = set()
    used = {c for col in fields.values() for c in (col if isinstance(col, list) else [col])}
    stem = file_stem(path)
    for line, raw, obj in records:
        try:
            if isinstance(obj, RowError):
                raise obj
            if not isinstance(obj, dict):
                raise RowError(f"{R_NOT_OBJECT}: got {type(obj).__name__}")
            mapped = map_record(obj, fields)
            if answer_from == "last_boxed":
                mapped = _answer_from_boxed(mapped, labels.get(C.ANSWER, repr(C.ANSWER)))
            if prepare is not None:
                mapped = prepare(mapped)
            row = normalize_row(mapped, default_family=stem, labels=labels)
            qid = row[C.QUESTION_ID]
            if qid in first_line:
                raise RowError(f"{R_DUPLICATE}: question_id {qid!r} already at line {first_line[qid]}")
        except RowError as err:
            rejects.append({"file": path, "line": line, "reason": str(err), "raw": raw[:_RAW_CHARS]})
            continue
        first_line[qid] = line
        ignored.update(set(obj) - set(C.QUESTION_COLUMNS) - used)
        rows.append(row)
    if ignored:
        logger.info("%s: ignoring fields %s", path, sorted(ignored))
    for name in _ID_LIKE:
        if name in ignored and C.QUESTION_ID not in fields:
            logger.warning("%s: column %r is ignored (question ids are hashes of the question text); map it with "
                           "fields: {question_id: %s} to use it (a repeated id is then rejected)", path, name, name)
    return rows, rejects


def _answer_from_boxed(obj: dict, label: str) -> dict:
    """``obj`` with its answer replaced by the last ``\\boxed{}`` of it; a question with tests and no
    answer is left as it is (code)."""
    value = obj.get(C.ANSWER)
    if _is_missing(value) or (isinstance(value, str) and not value.strip()):
        return obj
    text = _text(obj, C.ANSWER, required=False, label=label) or ""
    boxed = last_boxed(text)
    if boxed is None:
        raise RowError(f"{R_NO_BOXED}: no \\boxed{{}} answer in {label}")
    return {**obj, C.ANSWER: boxed}


def normalize_row(obj: Any, default_family: str, labels: Mapping[str, str] | None = None) -> dict:
    """One raw record -> a question row, or :class:`RowError` with the reason (``labels``: how a field is
    named in reasons, e.g. ``"'problem' (fields.question)"``)."""
    if not isinstance(obj, dict):
        raise RowError(f"{R_NOT_OBJECT}: got {type(obj).__name__}")
    labels = labels or {}
    question = _text(obj, C.QUESTION, required=True, label=labels.get(C.QUESTION))
    tests = "" if _is_missing(obj.get(C.TESTS)) else normalize_tests(obj[C.TESTS])
    answer = _text(obj, C.ANSWER, required=not tests, label=labels.get(C.ANSWER)) or ""
    return {
        C.QUESTION_ID: _text(obj, C.QUESTION_ID, required=False, label=labels.get(C.QUESTION_ID))
        or question_hash(question),
        C.QUESTION: question,
        C.ANSWER: answer,
        C.FAMILY: _text(obj, C.FAMILY, required=False, label=labels.get(C.FAMILY)) or default_family,
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


def _text(obj: dict, key: str, required: bool, label: str | None = None) -> str | None:
    value = obj.get(key)
    label = label or repr(key)
    if _is_missing(value):
        if required:
            raise RowError(f"{R_MISSING}: {label}")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(f"{R_TYPE}: {label} must be a string, got {type(value).__name__}")
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        if required:
            raise RowError(f"{R_EMPTY}: {label}")
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
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():  # CSV columns are read as text
        return int(value)
    raise RowError(f"{R_TYPE}: 'difficulty' must be an integer, got {value!r}")


def _jsonl_records(path: str) -> Iterator[tuple[int, str, Any]]:
    """Yield ``(line, raw, object | RowError)`` for every non-blank line; DataError if unreadable."""
    try:
        with fsspec.open(path, "rb", compression="infer") as f:
            for line, raw_bytes in enumerate(f, start=1):
                if line == 1:  # a byte order mark (editors on Windows write one) is not part of the JSON
                    raw_bytes = raw_bytes.removeprefix(codecs.BOM_UTF8)
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


def _table_records(path: str, kind: str = "parquet") -> Iterator[tuple[int, str, Any]]:
    """Rows of a parquet or CSV file (CSV: header row, every column read as text, compression inferred)."""
    try:
        if kind == "csv":
            from pyarrow import csv

            with fsspec.open(path, "rb", compression="infer") as f:
                data = f.read().removeprefix(codecs.BOM_UTF8)
            names = csv.open_csv(pa.py_buffer(data)).schema.names if data.strip() else []  # the header only
            table = csv.read_csv(pa.py_buffer(data),
                                 convert_options=csv.ConvertOptions(column_types={n: pa.string() for n in names}))
        else:
            with fsspec.open(path, "rb") as f:
                table = pq.read_table(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable {kind} file ({_first_line(err)})") from None
    for i, obj in enumerate(table.to_pylist(), start=1):
        yield i, json.dumps(obj, ensure_ascii=False, default=str), obj


def write_rows(rows: Iterable[dict], path: str) -> str:
    """Write rows as JSON lines (``.jsonl``/``.json``) or parquet by extension, creating parent dirs; atomically
    (``data.fs.atomic_write``: readers see the old file or the whole new one)."""
    rows = list(rows)
    kind = file_kind(path)
    if kind == "csv":
        raise DataError(f"{path}: question files are written as .jsonl or .parquet, not .csv")
    if kind == "parquet":
        table = pa.Table.from_pylist([_plain(r) for r in rows])
        with atomic_write(path, "wb") as f:
            pq.write_table(table, f)
    else:
        with atomic_write(path, "w", encoding="utf-8", compression="infer") as f:
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
