"""`ray-distill validate`'s checks before a cluster is touched: files readable, storage protocol known, P <= M."""

from pathlib import Path

from typer.testing import CliRunner

from ray_distill.cli import app
from ray_distill.config import load_config
from ray_distill.preflight import ERROR, WARNING, check_p_le_m, check_protocol, check_readable, preflight

ROOT = Path(__file__).resolve().parents[1]
CODE_JOB = str(ROOT / "jobs" / "paper_code.yaml")
QUICKSTART = str(ROOT / "jobs" / "quickstart.yaml")
runner = CliRunner()


def test_readable_files_pass_and_missing_or_unreadable_ones_name_their_key(tmp_path):
    good = tmp_path / "q.jsonl"
    good.write_text('{"question": "1+1", "answer": "2"}\n')
    assert check_readable("questions.path", str(good)) is None
    assert check_readable("questions.path", f"file://{good}") is None
    missing = check_readable("eval.suites[1].path", str(tmp_path / "nope.jsonl"))
    assert missing.level == ERROR and missing.line() == f"error: eval.suites[1].path: {tmp_path}/nope.jsonl: file not found"
    assert "is a directory" in check_readable("questions.path", str(tmp_path)).message
    unknown = check_readable("dev.suite.path", "nosuchproto://u:pw@h/q.jsonl")
    assert "not known to fsspec" in unknown.message and "pw" not in unknown.message  # redacted


def test_storage_protocol_must_be_known():
    assert check_protocol("storage", "/abs/out") is None
    assert check_protocol("storage", "memory://out") is None
    bad = check_protocol("storage", "s4://bucket/out")
    assert bad.level == ERROR and bad.key == "storage" and "'s4' is not known to fsspec" in bad.message


def test_p_greater_than_m_is_a_warning_that_says_what_it_means():
    cfg = load_config(QUICKSTART)
    assert check_p_le_m(cfg) is None
    cfg = load_config(QUICKSTART, ["selection.keep_per_question=6", "selection.samples_per_question=4"])
    w = check_p_le_m(cfg)
    assert w.level == WARNING and w.key == "selection.keep_per_question"
    assert "P=6 > M=4" in w.message and "at most 4 per question" in w.message


def test_preflight_collects_every_question_file(tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text('{"question": "1+1", "answer": "2"}\n')
    cfg = load_config(QUICKSTART, [f"questions.path={q}", "questions.synthetic=null", "storage=memory://x"])
    assert preflight(cfg) == []
    q.unlink()
    assert [p.key for p in preflight(cfg)] == ["questions.path"]


def test_validate_exits_2_on_a_missing_file_and_0_with_a_warning(tmp_path):
    missing = tmp_path / "gone.jsonl"
    result = runner.invoke(app, ["validate", QUICKSTART, f"questions.path={missing}", "questions.synthetic=null"])
    assert result.exit_code == 2 and f"error: questions.path: {missing}: file not found" in result.output
    result = runner.invoke(app, ["validate", QUICKSTART, "selection.keep_per_question=9"])
    assert result.exit_code == 0 and "warning: selection.keep_per_question: P=9 > M=" in result.output
    result = runner.invoke(app, ["validate", QUICKSTART, "storage=s4://b/out"])
    assert result.exit_code == 2 and "'s4' is not known to fsspec" in result.output
