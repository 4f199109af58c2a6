"""Every failure a user can cause ends in one line naming what and where, with its family's exit code
(ray_distill.errors) and the traceback in a log file — each family with its cheapest real trigger."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ray_distill import cli, errors
from ray_distill.cli import app
from ray_distill.errors import (
    BudgetExceeded,
    ConfigError,
    DataError,
    FieldError,
    MissingVariable,
    ModelLoadError,
    SandboxUnavailable,
    SubmitError,
    Unreachable,
    family,
)

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "jobs" / "quickstart.yaml")
runner = CliRunner()
ENV = {"COLUMNS": "400"}  # one line stays one line


def _one_line(result, code: int, text: str) -> str:
    """The failure's line on stderr: exactly one line, the family's code, ``text`` in it, no traceback; the path of
    its log file (which holds the traceback)."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], result.stderr
    assert "Traceback" not in result.output
    log = re.search(r"\(traceback: (.+)\)$", lines[0]).group(1)
    assert "Traceback (most recent call last)" in Path(log).read_text()
    return log


def _command(body):
    """Invoke ``body`` as a command under the CLI's failure handling (ray_distill.cli._guarded)."""
    tiny = typer.Typer()
    tiny.command()(cli._guarded(body))
    tiny.command("noop")(lambda: None)  # two commands: invoked by name, as in the real CLI
    return runner.invoke(tiny, [body.__name__], env=ENV)


def test_exit_codes_are_distinct_and_documented():
    codes = [code for code, _ in errors.EXIT_CODES.values()]
    assert len(set(codes)) == len(codes) and errors.UNEXPECTED not in codes
    readme = (ROOT / "README.md").read_text()
    for code, name in errors.EXIT_CODES.values():
        assert re.search(rf"\| {code} \| {name} \|", readme), f"README's exit-code table misses {code} {name}"


def test_old_import_paths_are_the_same_classes():
    from ray_distill import accounting, config, submit
    from ray_distill.curation import sandbox
    from ray_distill.data import questions

    assert config.ConfigError is ConfigError and questions.DataError is DataError
    assert questions.FieldError is FieldError and accounting.BudgetExceeded is BudgetExceeded
    assert submit.SubmitError is SubmitError and sandbox.SandboxUnavailable is SandboxUnavailable
    assert issubclass(ConfigError, ValueError) and issubclass(Unreachable, ConnectionError)  # old catches hold


def test_the_family_is_found_inside_rays_wrappers():
    from ray.exceptions import ActorDiedError, RayTaskError

    cause = SandboxUnavailable("no working code sandbox (bwrap: not installed)")
    tb = ("Traceback (most recent call last):\n  File \"graders.py\", line 9, in __init__\n    raise "
          "SandboxUnavailable(why)\nray_distill.errors.SandboxUnavailable: no working code sandbox (bwrap: not installed)")
    task = RayTaskError("Grader.__init__", tb, cause)
    assert family(task) == (cause, 5)
    assert family(task.as_instanceof_cause())[0] is cause  # the dual class, as ray.get raises it
    died = ActorDiedError(task)  # keeps only the text of its cause
    err, code = family(died)
    assert code == 5 and isinstance(err, SandboxUnavailable)
    assert str(err) == "no working code sandbox (bwrap: not installed)"

    class WorkerGroupError(RuntimeError):  # Ray Train's shape: {rank: error}
        worker_failures = {0: MissingVariable("TEACHER_KEY is not set")}

    assert family(WorkerGroupError("training failed"))[1] == 4
    try:
        try:
            raise FieldError("question", "q.jsonl: no column 'problem'")
        except FieldError as inner:
            raise ConfigError("questions.fields.question: no column 'problem'") from inner
    except ConfigError as outer:
        assert family(outer) == (outer, 2)  # the outer, user-facing one first
    assert family(KeyError("x"))[1] == 1
    try:
        try:
            raise ConfigError("a user's error")
        except ConfigError:
            {}["bug"]  # a bug while handling it is no user error
    except KeyError as bug:
        assert family(bug) == (bug, 1)
    from ray.exceptions import UserCodeException

    try:  # Ray Data's wrapper of a map function's error
        raise UserCodeException("UDF failed to process a data block.") from DataError("q.jsonl: no valid row")
    except UserCodeException as wrapped:
        assert family(wrapped)[1] == 3


def test_out_of_memory_from_torch_and_ray():
    import torch
    from ray.exceptions import OutOfMemoryError, RayTaskError

    torch_oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert family(RayTaskError("train_loop", "tb", torch_oom)) == (torch_oom, 9)
    assert family(OutOfMemoryError("Task was killed due to the node running low on memory.\nMemory on the node"))[1] == 9
    assert family(MemoryError())[1] == 9


def test_data_error_is_exit_3_naming_the_file(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text("not json\n")
    result = runner.invoke(app, ["run", QUICKSTART, f"storage={tmp_path}", f"questions.path={bad}",
                                 "questions.synthetic=null", "--dry-run"], env=ENV)
    log = _one_line(result, 3, f"data error: {bad}")
    assert log.startswith(str(tmp_path / "quickstart" / "logs" / "error-"))  # the run directory's logs


def test_unreachable_cluster_is_exit_6_before_any_work(tmp_path):
    result = runner.invoke(app, ["run", QUICKSTART, f"storage={tmp_path}"], env={**ENV, "RAY_ADDRESS": "127.0.0.1:1"})
    _one_line(result, 6, "unreachable: Ray cluster at 127.0.0.1:1 (from RAY_ADDRESS) cannot be reached: "
                         "ConnectionRefusedError")


def test_unreachable_storage_is_exit_6_with_a_log_elsewhere(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = runner.invoke(app, ["run", QUICKSTART, f"storage={blocker}/outputs"], env=ENV)
    log = _one_line(result, 6, f"unreachable: storage: {blocker}/outputs: cannot write there (NotADirectoryError")
    assert not log.startswith(str(blocker))  # the run directory cannot hold it: a temporary file does
    os.remove(log)


def test_submission_errors_are_exit_10_and_any_command_is_submittable(tmp_path, monkeypatch):
    monkeypatch.delenv("RD_TEST_UNSET", raising=False)
    result = runner.invoke(app, ["submit", "tune", str(ROOT / "jobs" / "quickstart_tune.yaml"), "--env",
                                 "RD_TEST_UNSET", "--address", "http://127.0.0.1:1", "--working-dir", str(ROOT)],
                           env=ENV)
    os.remove(_one_line(result, 10, "submit error: environment variable(s) not set locally: RD_TEST_UNSET"))
    result = runner.invoke(app, ["submit", "tune"], env=ENV)
    assert result.exit_code == 2 and "submit tune: the job file is missing" in result.output


def test_unreachable_jobs_api_is_exit_6(tmp_path):
    result = runner.invoke(app, ["submit", QUICKSTART, "--address", "http://127.0.0.1:1", "--working-dir", str(ROOT)],
                           env=ENV)
    os.remove(_one_line(result, 6, "unreachable: Jobs API at http://127.0.0.1:1 cannot be reached"))


def test_missing_key_variable_is_exit_4(monkeypatch):
    from ray_distill.config import EngineConfig
    from ray_distill.generation.engines import resolve_api_key

    monkeypatch.delenv("RD_TEST_KEY", raising=False)

    def generate():  # what the driver does before it builds an OpenAI-compatible teacher
        resolve_api_key(EngineConfig(kind="openai", model="m", base_url="http://127.0.0.1:1/v1", api_key_env="RD_TEST_KEY"))

    os.remove(_one_line(_command(generate), 4, "missing variable: engine 'openai' (m at http://127.0.0.1:1/v1): "
                                                 "environment variable RD_TEST_KEY named by api_key_env is not set"))


def test_a_model_that_does_not_load_is_exit_7(tmp_path):
    from ray_distill.models import load_tokenizer

    missing = str(tmp_path / "no-such-model")  # a path, not a hub id: nothing is asked of the network

    def evaluate():
        load_tokenizer(missing)

    os.remove(_one_line(_command(evaluate), 7, f"model does not load: model '{missing}' does not load: "))
    with pytest.raises(ModelLoadError, match="does not load"):
        load_tokenizer(str(tmp_path))  # a folder without a model


def test_budget_oom_and_unexpected_errors(tmp_path):
    import torch

    def generate():
        raise BudgetExceeded("budget.max_teacher_tokens=5,000: M-samples would spend ~9,000")

    os.remove(_one_line(_command(generate), 8, "over budget: budget.max_teacher_tokens=5,000"))

    def train():
        from ray.exceptions import RayTaskError

        raise RayTaskError("train_fn", "tb", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))

    os.remove(_one_line(_command(train), 9, "out of memory: CUDA out of memory. Tried to allocate 2.00 GiB "
                                              "(`ray-distill plan JOB` shows"))

    def curate():
        {}["missing"]

    os.remove(_one_line(_command(curate), 1, "unexpected error: KeyError: 'missing'"))


def test_sandbox_unavailable_inside_a_ray_actor_is_exit_5(ray_local):
    """The grader actor's sandbox check fails in its constructor; the driver sees ActorDiedError, the CLI the
    sandbox's own line."""

    @ray_local.remote
    class Grader:
        def __init__(self):
            from ray_distill.curation import sandbox

            os.environ["PATH"] = "/nonexistent"  # no bwrap here
            sandbox.detect_backend.cache_clear()
            sandbox.detect_backend("auto")

        def grade(self):
            return 1

    def curate():
        ray_local.get(Grader.remote().grade.remote())

    log = _one_line(_command(curate), 5, "sandbox unavailable: no working code sandbox (bwrap: not installed)")
    assert "ActorDiedError" in Path(log).read_text()
    os.remove(log)


def test_version_from_the_installed_command():
    exe = Path(sys.executable).parent / "ray-distill"
    done = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and re.fullmatch(r"ray-distill \d+\.\d+\.\d+\S*\n", done.stdout)


@pytest.mark.parametrize("url, extra", [("s3://bucket/out", "s3"), ("gs://bucket/out", "gcs")])
def test_a_missing_storage_package_names_its_extra(url, extra):
    import importlib.util

    if importlib.util.find_spec({"s3": "s3fs", "gcs": "gcsfs"}[extra]):
        pytest.skip(f"the {extra} package is installed here")
    hint = f"pip install 'ray-distill[{extra}]'"
    result = runner.invoke(app, ["validate", QUICKSTART, f"storage={url}"], env=ENV)
    assert result.exit_code == 2 and hint in result.output
    result = runner.invoke(app, ["run", QUICKSTART, f"storage={url}"], env=ENV)  # refused before a cluster starts
    os.remove(_one_line(result, 6, f"unreachable: storage: {url}: protocol "))
    assert hint in result.stderr
