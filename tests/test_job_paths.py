"""A job file's input paths resolve against its own directory (or its base_dir), outputs against the working
directory: the shipped jobs validate and dry-run from any directory, and the quickstart still writes outputs/
where it runs."""

import json
from pathlib import Path

from typer.testing import CliRunner

from ray_distill.cli import app
from ray_distill.config import load_config
from ray_distill.job_paths import resolve_inputs, resolve_path

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_the_job_files_directory_first_then_the_working_directory(tmp_path):
    jobs, cwd = tmp_path / "jobs", tmp_path / "here"
    (jobs / "data").mkdir(parents=True)
    (cwd / "old").mkdir(parents=True)
    (jobs / "data" / "q.jsonl").write_text("")
    (cwd / "old" / "q.jsonl").write_text("")
    (cwd / "data").mkdir()
    (cwd / "data" / "q.jsonl").write_text("")  # both exist: the job file's wins
    assert resolve_path("data/q.jsonl", str(jobs), str(cwd)) == str(jobs / "data" / "q.jsonl")
    assert resolve_path("old/q.jsonl", str(jobs), str(cwd)) == str(cwd / "old" / "q.jsonl")  # a job written before
    assert resolve_path("gone.jsonl", str(jobs), str(cwd)) == str(jobs / "gone.jsonl")  # reported where looked first
    for kept in ("/abs/q.jsonl", "s3://b/q.jsonl", "hf://datasets/o/n/q.parquet"):
        assert resolve_path(kept, str(jobs), str(cwd)) == kept
    assert resolve_path("q.jsonl", "s3://b/jobs", str(cwd)) == "s3://b/jobs/q.jsonl"  # a job file at a URL


def test_which_keys_resolve_and_base_dir(tmp_path):
    job = tmp_path / "jobs" / "x.yaml"
    tree = {"storage": "outputs", "base_dir": "..", "questions": {"path": "data/q.jsonl"},
            "dev": {"suite": {"name": "d", "path": "data/d.jsonl"}},
            "eval": {"suites": [{"name": "a", "path": "a.jsonl"}, {"name": "s", "synthetic": {}}],
                     "harness": {"tasks": ["t"], "include_path": "harness"}},
            "replay": {"source": "r.jsonl"}, "student": {"chat_template": "{{ messages }}"},
            "teachers": [{"name": "t", "engine": {"kind": "hf", "model": "org/name", "chat_template": "t.jinja"}}]}
    out = resolve_inputs(tree, str(job), "/elsewhere", exists=lambda p: False)
    base = str(tmp_path)  # base_dir '..' of the job file's directory
    assert out["base_dir"] == base and out["storage"] == "outputs"  # outputs stay relative to the working dir
    assert out["questions"]["path"] == f"{base}/data/q.jsonl" and out["dev"]["suite"]["path"] == f"{base}/data/d.jsonl"
    assert out["eval"]["suites"][0]["path"] == f"{base}/a.jsonl" and "path" not in out["eval"]["suites"][1]
    assert out["eval"]["harness"]["include_path"] == f"{base}/harness" and out["replay"]["source"] == f"{base}/r.jsonl"
    assert out["teachers"][0]["engine"]["chat_template"] == f"{base}/t.jinja"
    assert out["teachers"][0]["engine"]["model"] == "org/name"  # a hub id is no path
    assert out["student"]["chat_template"] == "{{ messages }}"  # Jinja text is no path
    assert tree["questions"]["path"] == "data/q.jsonl"  # the caller's tree is left alone


def test_a_job_runs_from_another_directory(tmp_path, monkeypatch):
    """A job file beside its data, loaded, validated and dry-run from an unrelated working directory: its input
    reads from beside it, its outputs land in the working directory."""
    jobs = tmp_path / "project" / "jobs"
    (jobs / "data").mkdir(parents=True)
    rows = [{"question": f"{i}+{i}", "answer": str(2 * i % 10), "family": "arith"} for i in range(40)]
    (jobs / "data" / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    quickstart = (ROOT / "jobs" / "quickstart.yaml").read_text()
    (jobs / "mine.yaml").write_text(quickstart.replace("questions:", "questions:\n  path: data/q.jsonl", 1))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config("../project/jobs/mine.yaml", ["questions.synthetic=null"])
    assert cfg.questions.path == str(jobs / "data" / "q.jsonl") and cfg.base_dir == str(jobs)
    assert cfg.storage == str(elsewhere / "outputs")
    env = {"COLUMNS": "300"}
    result = runner.invoke(app, ["validate", "../project/jobs/mine.yaml", "questions.synthetic=null"], env=env)
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["run", "../project/jobs/mine.yaml", "questions.synthetic=null", "--dry-run"], env=env)
    assert result.exit_code == 0, result.output
    assert "M-samples" in result.output and not (jobs / "outputs").exists()


def test_the_shipped_jobs_validate_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for job in ("public_data.yaml", "real_model.yaml", "judge_harness.yaml"):
        result = runner.invoke(app, ["validate", str(ROOT / "jobs" / job)], env={"COLUMNS": "300"})
        assert result.exit_code == 0, (job, result.output)  # every input file found and readable
        assert "error:" not in result.output
    cfg = load_config(str(ROOT / "jobs" / "real_model.yaml"))
    assert cfg.teachers[1].engine.chat_template == str(ROOT / "jobs" / "templates" / "chatml_think.jinja")
    assert cfg.eval.harness.include_path == str(ROOT / "jobs" / "harness")
    assert cfg.storage == str(tmp_path / "outputs")


def test_the_quickstart_still_writes_outputs_where_it_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert load_config("jobs/quickstart.yaml").storage == str(ROOT / "outputs")
