"""Question and suite files as public data sets publish them: `fields:` mappings, answers from worked
solutions, duplicate ids, byte order marks, hf:// URLs, CSV, and the benchmark presets (pure, no Ray)."""

from __future__ import annotations

import codecs
import datetime as dt
import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_distill import columns as C
from ray_distill.config import ConfigError, QuestionsConfig, SuiteConfig, config_from_dict
from ray_distill.data.benchmarks import CODE_PROMPT, build_choices, to_date
from ray_distill.data.questions import RowError, file_kind, last_boxed, read_questions
from ray_distill.data.sources import load_source


def _parquet(path, rows: list[dict]) -> str:
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return str(path)


def _jsonl(path, rows: list[dict], bom: bool = False) -> str:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + data)
    return str(path)


def _job(**questions) -> dict:
    return {"storage": "/tmp/unused", "questions": questions,
            "teachers": [{"name": "t", "engine": {"kind": "scripted", "persona": "concise"}}]}


# ----------------------------------------------------------------------------- fields: and its errors


def test_unknown_target_and_bad_columns_are_one_line_config_errors():
    with pytest.raises(ConfigError, match=r"questions\.fields: unknown target field 'problme'; known: question, "):
        config_from_dict(_job(path="q.parquet", fields={"problme": "problem"}))
    with pytest.raises(ConfigError, match=r"fields\.question: one column name, got a list"):
        config_from_dict(_job(path="q.parquet", fields={"question": ["a", "b"]}))
    with pytest.raises(ConfigError, match=r"fields\.answer: column names must be non-empty strings"):
        config_from_dict(_job(path="q.parquet", fields={"answer": " "}))
    with pytest.raises(ConfigError, match=r"fields\.correct_answer builds multiple-choice questions: a suite with "
                                          "preset gpqa"):
        config_from_dict(_job(path="q.parquet", fields={"correct_answer": "Correct Answer"}))
    with pytest.raises(ConfigError, match="apply to a question file"):
        config_from_dict(_job(synthetic={"num_questions": 3}, fields={"question": "problem"}))
    err = pytest.raises(ConfigError, config_from_dict, {**_job(path="q.jsonl"), "eval": {"suites": [
        {"name": "s", "path": "s.jsonl", "fields": {"questoin": "q"}}]}})
    assert "eval.suites.0.fields: unknown target field 'questoin'" in str(err.value) and "\n" not in str(err.value)


def test_a_mapped_column_missing_from_the_file_names_the_file_and_the_field(tmp_path):
    path = _parquet(tmp_path / "numina.parquet", [{"problem": "1+1", "solution": "\\boxed{2}"}])
    with pytest.raises(ConfigError) as err:
        load_source(QuestionsConfig(path=path, fields={"question": "problem", "answer": "answer_text"}))
    msg = str(err.value)
    assert msg.startswith("questions.fields.answer: column 'answer_text' not in ") and path in msg
    assert "columns: 'problem', 'solution'" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match=r"^eval\.suites\[s\]\.fields\.question_id: column 'uid' not in "):
        load_source(SuiteConfig(name="s", path=path, fields={"question": "problem", "question_id": "uid"}))
    with pytest.raises(ConfigError, match=r"^dev\.suite\.fields\.question: column 'Problem' not in "):
        load_source(SuiteConfig(name="d", path=path, fields={"question": "Problem"}), where="dev.suite")


def test_numina_shaped_parquet_with_ids_and_worked_solutions(tmp_path):
    """problem/solution/id: the answer is the last \\boxed{} of the solution; a repeated id is rejected
    with its reason (the first occurrence kept), a solution without \\boxed{} too (never guessed)."""
    path = _parquet(tmp_path / "numina.parquet", [
        {"problem": "Compute 1/2 + 1/2.", "solution": "First \\boxed{0.5} is half, so $\\boxed{\\frac{2}{2}}$.",
         "id": 7, "source": "amc"},
        {"problem": "What is 2+2?", "solution": "It is \\boxed{4}.", "id": 8, "source": "amc"},
        {"problem": "Another question", "solution": "\\boxed{5}", "id": 7, "source": "amc"},
        {"problem": "No box here", "solution": "The answer is 3.", "id": 9, "source": "amc"},
        {"problem": None, "solution": "\\boxed{1}", "id": 10, "source": "amc"},
    ])
    rows, rejects = load_source(QuestionsConfig(path=path, fields={"question": "problem", "answer": "solution",
                                                                   "question_id": "id"}, answer_from="last_boxed"))
    assert [(r[C.QUESTION_ID], r[C.ANSWER]) for r in rows] == [("7", "\\frac{2}{2}"), ("8", "4")]
    assert rows[0][C.QUESTION] == "Compute 1/2 + 1/2." and rows[0][C.PROMPT] == "Compute 1/2 + 1/2."
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (3, "duplicate_id: question_id '7' already at line 1"),
        (4, "no_boxed_answer: no \\boxed{} answer in 'solution' (fields.answer)"),
        (5, "missing_field: 'problem' (fields.question)"),
    ]
    assert json.loads(rejects[0]["raw"])["problem"] == "Another question"  # the rejected row, kept for inspection


def test_without_a_mapping_an_id_column_is_ignored_with_a_warning(tmp_path, caplog):
    path = _jsonl(tmp_path / "q.jsonl", [{"question": "a", "answer": "1", "id": 1},
                                         {"question": "b", "answer": "2", "id": 1}])
    rows, rejects = read_questions(path)
    assert len(rows) == 2 and not rejects  # ids are hashes of the text: nothing merged, nothing rejected
    assert "column 'id' is ignored" in caplog.text and "fields: {question_id: id}" in caplog.text


def test_s1k_shaped_jsonl_with_a_byte_order_mark(tmp_path):
    rows = [{"question": "What is 3+4?", "solution": "We add: \\boxed{7}", "cot_type": "math"},
            {"question": "What is 1+1?", "solution": "\\boxed{2}", "cot_type": "math"}]
    path = _jsonl(tmp_path / "s1k.jsonl", rows, bom=True)
    read, rejects = load_source(SuiteConfig(name="s1k", path=path, fields={"answer": "solution"},
                                            answer_from="last_boxed"))
    assert not rejects and [r[C.ANSWER] for r in read] == ["7", "2"]
    plain, rejects = read_questions(_jsonl(tmp_path / "plain.jsonl", [{"question": "q", "answer": "1"}], bom=True))
    assert len(plain) == 1 and not rejects  # line 1 used to be rejected as invalid JSON


def test_code_set_with_an_input_output_json_string(tmp_path):
    io = json.dumps({"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]})
    path = _parquet(tmp_path / "code.parquet", [
        {"problem_id": "p1", "question": "Add two numbers.", "input_output": io, "solutions": "[]"},
        {"problem_id": "p2", "question": "Broken tests.", "input_output": "{not json", "solutions": "[]"},
    ])
    rows, rejects = load_source(QuestionsConfig(path=path, fields={"question_id": "problem_id",
                                                                   "tests": "input_output"}))
    assert [r[C.QUESTION_ID] for r in rows] == ["p1"] and rows[0][C.ANSWER] == ""
    assert json.loads(rows[0][C.TESTS]) == {"type": "stdio", "cases": [{"input": "1 2\n", "output": "3\n"},
                                                                      {"input": "3 4\n", "output": "7\n"}]}
    assert rejects[0]["reason"].startswith("invalid_tests: 'tests' is a string but not JSON")


def test_fields_read_through_any_fsspec_url():
    """A remote file (memory:// standing in for s3:// or hf://) is read through fsspec like a local one."""
    with fsspec.open("memory://public/numina.jsonl", "wb") as f:
        f.write(codecs.BOM_UTF8 + json.dumps({"problem": "2+3", "solution": "\\boxed{5}", "id": "n1"}).encode() + b"\n")
    rows, _ = load_source(QuestionsConfig(path="memory://public/numina.jsonl", answer_from="last_boxed",
                                          fields={"question": "problem", "answer": "solution", "question_id": "id"}))
    assert rows == [{C.QUESTION_ID: "n1", C.QUESTION: "2+3", C.ANSWER: "5", C.FAMILY: "numina", C.DIFFICULTY: -1,
                     C.TESTS: "", C.PROMPT: "2+3"}]


def test_hf_urls_resolve_to_huggingface_hub_filesystem_without_network():
    from huggingface_hub import HfFileSystem

    url = "hf://datasets/some-org/some-set/data/train-00000-of-00001.parquet"
    fs, path = fsspec.core.url_to_fs(url)
    assert isinstance(fs, HfFileSystem) and path == "datasets/some-org/some-set/data/train-00000-of-00001.parquet"
    assert file_kind(url) == "parquet" and file_kind("hf://datasets/o/n/test.jsonl") == "jsonl"
    assert file_kind("hf://datasets/o/n/gpqa_diamond.csv") == "csv"
    cfg = config_from_dict({**_job(path=url, fields={"question": "problem"}), "eval": {"suites": [
        {"name": "aime", "preset": "aime", "path": "hf://datasets/o/aime@refs/convert/parquet/default/train/0.parquet"}]}})
    assert cfg.questions.path == url  # kept as a URL, never made a local path


# ----------------------------------------------------------------------------- \boxed{}


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("first \\boxed{1}, finally \\boxed{ 2 }", "2"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
    ("\\boxed{x^{2}} and then \\boxed{unclosed", "x^{2}"),  # the last *well-formed* one
    ("$\\boxed 7$", "7"),
    ("\\fbox{A}", "A"),
    ("\\boxed{}", None),
    ("\\boxedx{3}", None),
    ("no box", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


# ----------------------------------------------------------------------------- presets


def test_aime_preset_maps_problem_and_requires_integer_answers(tmp_path):
    path = _jsonl(tmp_path / "aime24.jsonl", [
        {"id": "2024-I-1", "problem": "Find x.", "answer": "033", "url": "u"},
        {"id": "2024-I-2", "problem": "Find y.", "answer": 204, "url": "u"},
        {"id": "2024-I-3", "problem": "Find z.", "answer": "1/2", "url": "u"},
    ])
    rows, rejects = load_source(SuiteConfig(name="aime24", preset="aime", path=path))
    assert [(r[C.QUESTION_ID], r[C.ANSWER]) for r in rows] == [("2024-I-1", "33"), ("2024-I-2", "204")]
    assert rows[0][C.PROMPT] == "Find x.\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert rows[0][C.QUESTION] == "Find x."  # the instruction stays out of the question (decontamination)
    assert rejects[0]["reason"] == "invalid_answer: aime answers are integers, got '1/2'"
    # the suite's own prompt and fields win over the preset's; answers from a worked solution compose too
    path2 = _jsonl(tmp_path / "other.jsonl", [{"Question": "Q?", "worked": "so \\boxed{007}"}])
    rows, _ = load_source(SuiteConfig(name="o", preset="aime", path=path2, prompt="Q: {question}",
                                      fields={"question": "Question", "answer": "worked"}, answer_from="last_boxed"))
    assert rows[0][C.PROMPT] == "Q: Q?" and rows[0][C.ANSWER] == "7"


def test_a_preset_without_its_columns_fails_naming_the_field(tmp_path):
    path = _parquet(tmp_path / "gpqa.parquet", [{"Question": "Q?", "Correct Answer": "1"}])
    with pytest.raises(ConfigError, match=r"^eval\.suites\[g\]\.fields\.incorrect_answers: .* has no column for it "
                                          r"\(tried \['Incorrect Answer 1', "):
        load_source(SuiteConfig(name="g", preset="gpqa", path=path))


def test_gpqa_preset_letters_the_options_in_a_seeded_order(tmp_path):
    rows = [{"Record ID": f"rec{i}", "Question": f"Which is right, {i}?", "Correct Answer": f"right {i}",
             "Incorrect Answer 1": f"wrong a{i}", "Incorrect Answer 2": f"wrong b{i}",
             "Incorrect Answer 3": f"  wrong\nc{i} ", "Subdomain": "x"} for i in range(12)]
    path = _parquet(tmp_path / "gpqa_diamond.parquet", rows)
    suite = SuiteConfig(name="gpqa", preset="gpqa", domain="ood", path=path)
    read, rejects = load_source(suite)
    assert not rejects and len(read) == 12
    first = read[0]
    assert first[C.QUESTION_ID] == "rec0" and first[C.ANSWER_FORMAT] == "choice"
    lines = first[C.QUESTION].split("\n")
    assert lines[0] == "Which is right, 0?" and lines[1] == "" and [ln[:3] for ln in lines[2:]] == ["A) ", "B) ", "C) ",
                                                                                                  "D) "]
    assert lines[2 + "ABCD".index(first[C.ANSWER])] == f"{first[C.ANSWER]}) right 0"
    assert "wrong c0" in first[C.QUESTION]  # option text on one line
    assert first[C.PROMPT].endswith("put the letter of your answer within \\boxed{}.")
    assert len({r[C.ANSWER] for r in read}) > 1  # the correct option is not always in the same place
    assert load_source(suite)[0] == read  # the same order every time (seeded by the question, not shuffled per run)
    with pytest.raises(RowError, match="option incorrect_answers\\[1\\] is empty"):
        build_choices({C.QUESTION: "Q", "correct_answer": "a", "incorrect_answers": ["b", None, "c"]})


def test_code_preset_reads_livecodebench_layout_and_filters_a_date_window(tmp_path):
    tests = json.dumps([{"input": "1\n", "output": "2\n", "testtype": "stdin"}])
    rows = [{"question_id": f"lc{i}", "question_title": "t", "question_content": f"Problem {i}.",
             "public_test_cases": tests, "contest_date": date, "difficulty": "easy"}
            for i, date in enumerate(["2024-07-30T00:00:00", "2024-08-01T00:00:00", "2024-12-31T12:00:00",
                                      "2025-02-01T00:00:00", "soon"])]
    path = _parquet(tmp_path / "lcb.parquet", rows)
    suite = SuiteConfig(name="lcb", preset="code", path=path, date_from="2024-08-01", date_to="2024-12-31")
    read, rejects = load_source(suite)
    assert [r[C.QUESTION_ID] for r in read] == ["lc1", "lc2"]
    assert read[0][C.PROMPT] == CODE_PROMPT.replace("{question}", "Problem 1.")
    assert json.loads(read[0][C.TESTS])["cases"] == [{"input": "1\n", "output": "2\n"}]
    assert [r["reason"] for r in rejects] == [
        "outside_date_window: dated 2024-07-30, before date_from 2024-08-01",
        "outside_date_window: dated 2025-02-01, after date_to 2024-12-31",
        "invalid_date: 'soon' is not a date (YYYY-MM-DD...)"]
    assert len(load_source(SuiteConfig(name="lcb", preset="code", path=path))[0]) == 5  # no window: all
    assert to_date(dt.datetime(2024, 8, 1, 13)) == dt.date(2024, 8, 1)


def test_math500_preset_and_gpqa_csv(tmp_path):
    path = _jsonl(tmp_path / "math500.jsonl", [{"problem": "P", "solution": "\\boxed{\\pi}", "answer": "\\pi",
                                                "subject": "Geometry", "level": 3, "unique_id": "test/geo/1.json"}])
    rows, _ = load_source(SuiteConfig(name="math500", preset="math500", path=path))
    assert (rows[0][C.QUESTION_ID], rows[0][C.ANSWER]) == ("test/geo/1.json", "\\pi")
    csv = tmp_path / "gpqa_diamond.csv"
    csv.write_text('Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3,Record ID\n'
                   '"Pick, carefully",007,1,2,3,recA\n')
    rows, _ = load_source(SuiteConfig(name="g", preset="gpqa", path=str(csv)))
    assert rows[0][C.QUESTION].startswith("Pick, carefully\n\n") and "007" in rows[0][C.QUESTION]  # CSV read as text


def test_suite_options_are_validated():
    def suite(**kw) -> dict:
        return {**_job(path="q.jsonl"), "eval": {"k": 4, "suites": [{"name": "s", "path": "s.jsonl", **kw}]}}

    with pytest.raises(ConfigError, match="date_from/date_to need a date column"):
        config_from_dict(suite(date_from="2024-01-01"))
    with pytest.raises(ConfigError, match="date_from 2024-02-01 is after date_to 2024-01-01"):
        config_from_dict(suite(preset="code", date_from="2024-02-01", date_to="2024-01-01"))
    with pytest.raises(ConfigError, match=r"eval: suites\.0\.pass_k \[8\]: each must be at most the suite's k=4"):
        config_from_dict(suite(pass_k=[8]))
    with pytest.raises(ConfigError, match=r"eval\.suites\.0\.preset: Input should be 'aime', "):
        config_from_dict(suite(preset="aime25"))
    with pytest.raises(ConfigError, match=r"dev\.suite\.pass_k \[8\]: each must be at most the suite's k=4"):
        config_from_dict({**suite(), "dev": {"suite": {"name": "d", "path": "d.jsonl", "pass_k": [8]}}})
    cfg = config_from_dict(suite(k=16, pass_k=[1, 8], temperature=0.6, fields={"date": "released"},
                                 date_from="2024-01-01"))
    assert cfg.eval.sampling(cfg.eval.suites[0]) == {"k": 16, "temperature": 0.6, "max_tokens": 128}


# ----------------------------------------------------------------------------- the README's section


def _contains(big, small) -> bool:
    """Every key/value of ``small`` is in ``big`` (list items: each matches some item of ``big``)."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and _contains(big[k], v) for k, v in small.items())
    if isinstance(small, list):
        return isinstance(big, list) and all(any(_contains(b, s) for b in big) for s in small)
    return big == small


def test_every_yaml_of_the_readme_public_data_section_is_part_of_a_job_file_that_validates():
    import re
    from pathlib import Path

    import yaml

    from ray_distill.config import load_config

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    section = readme.split("## Public data sets and benchmarks", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert len(blocks) >= 2
    for block in blocks:
        job = re.match(r"# (jobs/\S+\.yaml)", block).group(1)
        cfg = load_config(root / job)
        assert _contains(yaml.safe_load((root / job).read_text()), yaml.safe_load(block)), job
        if job == "jobs/paper_math.yaml":
            assert {s.preset for s in cfg.eval.suites} == {"aime", "math500", "gpqa"}
    assert "ray-distill run jobs/public_data.yaml" in section  # run by tests/test_public_data_job.py
