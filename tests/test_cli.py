"""The CLI's contract: --help everywhere, one-line errors (no traceback) for bad job files and overrides."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ray_distill.cli import app

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "jobs" / "quickstart.yaml")
runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["run"], ["generate"], ["curate"], ["train"], ["eval"], ["tune"], ["validate"],
                                     ["submit"], ["plan"], ["ablate"]])
def test_help_on_every_command(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


@pytest.mark.parametrize("command", ["run", "generate", "curate", "train", "eval", "tune", "validate"])
def test_bad_override_is_one_line(command):
    result = runner.invoke(app, [command, QUICKSTART, "train.epoch=3"])
    assert result.exit_code == 2
    assert "jobs/quickstart.yaml: train.epoch: unknown key" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_wrong_type_and_missing_file():
    result = runner.invoke(app, ["run", QUICKSTART, "train.epochs=many"])
    assert result.exit_code == 2 and "train.epochs" in result.output and "'many'" in result.output
    result = runner.invoke(app, ["run", "jobs/does-not-exist.yaml"])
    assert result.exit_code == 2 and "does-not-exist.yaml: job file not found" in result.output


def test_dry_run_estimates_teacher_tokens_without_generating(tmp_path):
    result = runner.invoke(app, ["run", QUICKSTART, f"storage={tmp_path}", "--dry-run",
                                 "budget.max_teacher_tokens=1000"], env={"COLUMNS": "200"})
    assert result.exit_code == 8, result.output  # the budget family: the plan may not fit the cap
    out = result.output
    # three candidates answer 800 probe questions once; each could win and sample 1,200 questions x M=4
    assert out.count("800×1") == 3 and out.count("1,200×4") == 3
    assert "204,800" in out  # 800 x max_tokens 256: nothing stored yet, so the cap is assumed
    assert "budget.max_teacher_tokens=1,000: may exceed" in out
    assert "over budget: the dry run's estimate may exceed budget.max_teacher_tokens=1,000" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing generated, nothing written
    allowed = runner.invoke(app, ["run", QUICKSTART, f"storage={tmp_path}", "--dry-run", "--allow-over-budget",
                                  "budget.max_teacher_tokens=1000"], env={"COLUMNS": "200"})
    assert allowed.exit_code == 0 and "may exceed" in allowed.output
    within = runner.invoke(app, ["run", QUICKSTART, f"storage={tmp_path}", "--dry-run",
                                 "budget.max_teacher_tokens=10000000"], env={"COLUMNS": "200"})
    assert within.exit_code == 0 and "budget.max_teacher_tokens=10,000,000: within" in within.output


def test_submit_rejects_a_bad_config_before_contacting_the_cluster():
    # Nothing listens on port 1: the config error must come first.
    result = runner.invoke(app, ["submit", QUICKSTART, "selection.keep=2", "--address", "http://127.0.0.1:1"])
    assert result.exit_code == 2
    assert "selection.keep: unknown key" in result.output


def test_validate_prints_the_resolved_config():
    result = runner.invoke(app, ["validate", QUICKSTART, "train.epochs=2"])
    assert result.exit_code == 0 and '"epochs": 2' in result.output


def test_dry_run_counts_the_judge_apart_from_the_teachers(tmp_path):
    job = str(ROOT / "jobs" / "judge_harness.yaml")
    result = runner.invoke(app, ["run", job, f"storage={tmp_path}", "--dry-run"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    # 2 teachers x (probe of 100 questions, M=4 on the 350 left after the 50 dev questions), then the judge on each
    assert out.count("probe/judge") == 2 and out.count("M-samples/judge") == 2
    assert out.count("350×4") == 4 and "6,400" in out  # judge: 100 probe answers x max_tokens 64, nothing stored
    assert "expected judge tokens: at most 12,800 on the probe + 89,600 on the M samples (always mode" in out
    assert "M-sample generation of the winner ≤ 358,400" in out  # teacher totals leave the judge out
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["tune", "validate"])
def test_a_search_key_no_trial_can_vary_is_one_line(command, tmp_path):
    tune_job = str(ROOT / "jobs" / "quickstart_tune.yaml")
    result = runner.invoke(app, [command, tune_job, f"storage={tmp_path}",
                                 "tune.search_space={compression.order: [paper, compress_first]}"])
    assert result.exit_code == 2, result.output
    assert "tune.search_space.compression.order: cannot be searched" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, [command, tune_job, f"storage={tmp_path}", "tune.metric=accuracy"])
    assert result.exit_code == 2 and "tune.metric: 'accuracy' is not a trial metric" in result.output
    assert not any(tmp_path.iterdir())  # refused before anything ran


def test_dry_run_of_a_paper_job_plans_memory_then_says_what_the_estimate_needs():
    """`run --dry-run` of a job on s3:// storage, on a machine without s3fs: the memory plan (no storage needed)
    prints, then one line says the token estimate needs the store's package: exit 2, no traceback."""
    result = runner.invoke(app, ["run", str(ROOT / "jobs" / "paper_math.yaml"), "--dry-run"], env={"COLUMNS": "200"})
    assert "Memory plan of paper-math" in result.output and "Traceback" not in result.output
    if result.exit_code == 0:  # s3fs installed here: the estimate itself ran (against an unreachable bucket?)
        pytest.skip("s3fs is installed: the missing-package line cannot show")
    assert result.exit_code == 2
    assert "error: storage: s3://your-bucket/ray-distill/outputs: protocol 's3' needs a package" in result.output
    assert "the dry run's token estimate reads the generation store there" in result.output


def test_the_installed_command_runs_main():
    """`ray-distill` (the console script users run) enters through ``cli.main``, which sends what Ray's C++ core
    writes to fd 2 to the job's log file; an entry point at ``app`` printed a 400-character core_worker line in
    the middle of the quickstart's console."""
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "ray-distill"]
    assert script.value == "ray_distill.cli:main"
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'ray-distill = "ray_distill.cli:main"' in text
