"""`ray-distill submit [COMMAND] JOB [overrides] [-- options]`: any command's entrypoint, built locally."""

from pathlib import Path

import pytest

from ray_distill.cli import split_submit_args
from ray_distill.errors import SubmitError
from ray_distill.submit import COMMANDS, build_submission, ray_job_submit_command

ROOT = Path(__file__).resolve().parents[1]


def test_the_command_comes_first_or_is_run():
    assert split_submit_args("jobs/q.yaml", ["train.epochs=2"]) == ("run", "jobs/q.yaml", ["train.epochs=2"], [])
    assert split_submit_args("tune", ["jobs/t.yaml", "tune.num_samples=4"]) == \
        ("tune", "jobs/t.yaml", ["tune.num_samples=4"], [])
    assert split_submit_args("train", ["jobs/q.yaml", "train.epochs=2", "--corpus", "s3://b/c"]) == \
        ("train", "jobs/q.yaml", ["train.epochs=2"], ["--corpus", "s3://b/c"])
    assert set(COMMANDS) == {"run", "tune", "ablate", "generate", "curate", "train", "eval"}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_becomes_the_entrypoint(command, monkeypatch):
    monkeypatch.chdir(ROOT)
    job = "jobs/quickstart_tune.yaml" if command == "tune" else "jobs/quickstart.yaml"
    sub = build_submission(job, ["train.epochs=2"], command=command)
    assert sub.entrypoint == f"ray-distill {command} {job} train.epochs=2"


def test_options_install_and_the_plain_ray_job_submit_line(monkeypatch):
    monkeypatch.chdir(ROOT)
    sub = build_submission("jobs/quickstart.yaml", [], command="eval", command_args=["--model", "s3://b/student"],
                           install="pip", extra="cpu")
    assert sub.entrypoint == "python -m ray_distill.cli eval jobs/quickstart.yaml --model s3://b/student"
    argv = ray_job_submit_command("jobs/quickstart.yaml", ["train.epochs=2"], command="curate")
    assert argv[argv.index("--") + 1:] == ["ray-distill", "curate", "jobs/quickstart.yaml", "train.epochs=2"]
    with pytest.raises(SubmitError, match="cannot submit 'validate'"):
        build_submission("jobs/quickstart.yaml", [], command="validate")
