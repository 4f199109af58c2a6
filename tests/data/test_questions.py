"""Question files: valid rows kept, bad rows rejected with reasons, unreadable files fail naming the file."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ray_distill import columns as C
from ray_distill.data.questions import DataError, normalize_tests, question_hash, read_questions, write_rows


def _write_lines(path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_jsonl_defaults_and_coercion(tmp_path):
    path = _write_lines(
        tmp_path / "gsm.jsonl",
        [
            json.dumps({"question": "1+1", "answer": 2}),
            "",
            json.dumps({"question": "2+2", "answer": "4", "question_id": 7, "family": "f", "difficulty": 3, "x": 1}),
        ],
    )
    rows, rejects = read_questions(path)
    assert rejects == []
    assert rows[0] == {C.QUESTION_ID: question_hash("1+1"), C.QUESTION: "1+1", C.ANSWER: "2", C.FAMILY: "gsm",
                       C.DIFFICULTY: -1, C.TESTS: ""}
    assert rows[1] == {C.QUESTION_ID: "7", C.QUESTION: "2+2", C.ANSWER: "4", C.FAMILY: "f", C.DIFFICULTY: 3, C.TESTS: ""}


def test_bad_rows_are_rejected_with_line_and_reason(tmp_path):
    path = _write_lines(
        tmp_path / "q.jsonl",
        [
            json.dumps({"question": "a", "answer": "1"}),
            '{"question": "b", "answer": ',  # bad JSON
            json.dumps({"question": "c"}),  # missing answer
            json.dumps({"question": "  ", "answer": "1"}),  # empty question
            json.dumps({"question": ["x"], "answer": "1"}),  # wrong type
            json.dumps({"question": "a", "answer": "1"}),  # duplicate id (same text)
            json.dumps([1, 2]),  # not an object
            json.dumps({"question": "d", "answer": "1", "difficulty": "hard"}),
            json.dumps({"question": "e", "answer": True}),  # bool is not a number here
            json.dumps({"question": "f", "answer": "6"}),
        ],
    )
    rows, rejects = read_questions(path)
    assert [r[C.QUESTION] for r in rows] == ["a", "f"]
    by_line = {r["line"]: r["reason"] for r in rejects}
    assert by_line[2].startswith("invalid_json")
    assert by_line[3] == "missing_field: 'answer'"
    assert by_line[4] == "empty_field: 'question'"
    assert by_line[5].startswith("wrong_type: 'question'")
    assert by_line[6].startswith("duplicate_id") and "line 1" in by_line[6]
    assert by_line[7].startswith("not_an_object")
    assert by_line[8].startswith("wrong_type: 'difficulty'")
    assert by_line[9].startswith("wrong_type: 'answer'")
    assert all(r["file"] == path and r["raw"] for r in rejects)
    assert rejects[0]["raw"] == '{"question": "b", "answer": '


def test_non_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"question": "a", "answer": "1"}\n{"question": "\xff", "answer": "1"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid UTF-8") as err:
        read_questions(str(path))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        ("missing.jsonl", None, "file not found"),
        ("fake.parquet", b"not parquet at all", "not a readable parquet file"),
        ("q.tsv", b"question\tanswer\n", "unsupported file type"),
        ("header_only.csv", b"question,answer\n", "no valid question rows"),
        ("array.json", b'[\n{"question": "a", "answer": "1"}\n]\n', "JSON array"),
        ("allbad.jsonl", b'{"q": 1}\n{"q": 2}\n', "no valid question rows"),
    ],
)
def test_unreadable_files_raise_data_error(tmp_path, name, content, pattern):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=pattern) as err:
        read_questions(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_parquet_round_trip_with_rejects(tmp_path):
    df = pd.DataFrame(
        {"question": ["a", "b", None, "d"], "answer": ["1", "2", "3", None], "difficulty": [1.0, None, 2.0, 3.0]}
    )
    path = str(tmp_path / "sub" / "qs.parquet")
    write_rows(df.to_dict("records"), path)
    rows, rejects = read_questions(path)
    assert [(r[C.QUESTION], r[C.DIFFICULTY], r[C.FAMILY]) for r in rows] == [("a", 1, "qs"), ("b", -1, "qs")]
    assert [(r["line"], r["reason"]) for r in rejects] == [(3, "missing_field: 'question'"), (4, "missing_field: 'answer'")]


def test_write_rows_jsonl_on_memory_fs():
    rows = [{C.QUESTION: "a", C.ANSWER: "1"}, {C.QUESTION: "b", C.ANSWER: 2.5}]
    path = write_rows(rows, "memory://ray-distill-test/deep/dir/q.jsonl")
    back, rejects = read_questions(path)
    assert [r[C.ANSWER] for r in back] == ["1", "2.5"] and rejects == []


# ----------------------------------------------------------------------------- code questions

STDIO = {"type": "stdio", "cases": [{"input": "1 2\n", "output": "3\n"}]}


@pytest.mark.parametrize(
    "tests, canonical",
    [
        ([{"input": "1 2\n", "output": "3\n"}], STDIO),
        ([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}], STDIO),  # LiveCodeBench public tests
        ({"inputs": ["1 2\n"], "outputs": ["3\n"]}, STDIO),  # APPS/TACO standard input
        ({"inputs": ["1 2\n"], "outputs": ["3\n"], "fn_name": ""}, STDIO),
        ({"inputs": [["1 2"]], "outputs": [["3"]]}, {"type": "stdio", "cases": [{"input": "1 2", "output": "3"}]}),
        (json.dumps({"inputs": ["1 2\n"], "outputs": ["3\n"]}), STDIO),  # stored as a JSON string
        ({"inputs": [[1, 2], [[3], 4]], "outputs": [[3], [7]], "fn_name": "add"},  # APPS call-based
         {"type": "call", "fn_name": "add", "cases": [{"args": [1, 2], "expected": [3]},
                                                     {"args": [[3], 4], "expected": [7]}]}),
        ({"fn_name": "add", "cases": [{"args": [1, 2], "expected": 3}]},
         {"type": "call", "fn_name": "add", "cases": [{"args": [1, 2], "expected": 3}]}),
        (STDIO, STDIO),  # canonical in, canonical out
    ],
)
def test_tests_shapes_normalise_to_one_canonical_form(tests, canonical):
    text = normalize_tests(tests)
    assert json.loads(text) == canonical
    assert normalize_tests(text) == text  # idempotent


def test_code_rows_read_back_and_bad_tests_are_rejected(tmp_path):
    path = _write_lines(
        tmp_path / "code.jsonl",
        [
            json.dumps({"question": "sum", "tests": [{"input": "1 2", "output": "3"}]}),
            json.dumps({"question": "both", "answer": "3", "tests": {"fn_name": "f", "cases": [{"args": [], "expected": 3}]}}),
            json.dumps({"question": "b1", "tests": {"inputs": ["1"], "outputs": []}}),
            json.dumps({"question": "b2", "tests": [{"input": "1"}]}),
            json.dumps({"question": "b3", "tests": {"fn_name": "not valid", "cases": [{"args": [], "expected": 1}]}}),
            json.dumps({"question": "b4", "tests": {"fn_name": "f", "cases": [{"args": 1, "expected": 1}]}}),
            json.dumps({"question": "b5", "tests": "{not json"}),
            json.dumps({"question": "b6", "tests": []}),
            json.dumps({"question": "b7", "tests": 5}),
            json.dumps({"question": "b8", "tests": [{"input": "x", "output": "y", "testtype": "functional"}]}),
            json.dumps({"question": "b9"}),  # neither answer nor tests
        ],
    )
    rows, rejects = read_questions(path)
    assert [(r[C.QUESTION], r[C.ANSWER]) for r in rows] == [("sum", ""), ("both", "3")]
    assert json.loads(rows[0][C.TESTS])["type"] == "stdio" and json.loads(rows[1][C.TESTS])["type"] == "call"
    reasons = {r["line"]: r["reason"] for r in rejects}
    assert reasons == {
        3: "invalid_tests: 'tests' has 1 inputs but 0 outputs",
        4: "invalid_tests: tests[0] must be an object with 'input' and 'output'",
        5: "invalid_tests: 'tests.fn_name' must be a Python identifier, got 'not valid'",
        6: "invalid_tests: tests case 0: 'args' must be a list of arguments, got int",
        7: "invalid_tests: 'tests' is a string but not JSON (Expecting property name enclosed in double quotes)",
        8: "empty_field: 'tests' has no test case",
        9: "invalid_tests: expected a list of {input, output}, {inputs, outputs[, fn_name]} or {fn_name, cases}, got int",
        10: "invalid_tests: tests[0] has testtype 'functional'; use {fn_name, cases} for calls",
        11: "missing_field: 'answer'",
    }
    assert all(r["file"] == path for r in rejects)


def test_code_questions_in_parquet(tmp_path):
    path = str(tmp_path / "code.parquet")
    write_rows([{"question": "sum", "tests": json.dumps({"inputs": ["1 2"], "outputs": ["3"]})},
                {"question": "add", "tests": json.dumps({"inputs": [[1, 2]], "outputs": [3], "fn_name": "add"})}], path)
    rows, rejects = read_questions(path)
    assert rejects == [] and [json.loads(r[C.TESTS])["type"] for r in rows] == ["stdio", "call"]
