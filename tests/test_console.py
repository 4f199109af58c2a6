"""The console of a job (ray_distill.console): what reaches the screen, what goes to the log file only, the
training bar read from the step lines Ray forwards from the training workers."""

from __future__ import annotations

import io
import logging
import warnings

from rich.console import Console

from ray_distill.console import JobLog, console_shows, parse_step_line
from ray_distill.training.loop import STEP_FORMAT


def test_the_step_line_the_training_loop_logs_is_read_back():
    line = "(RayTrainWorker pid=12) " + STEP_FORMAT % (40, 540, 0.4321, 2e-3, 1834.4)
    assert parse_step_line(line) == (40, 540, 0.4321, 1834.0)
    assert parse_step_line("stepping 3 of 4") is None


def _record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "m", None, None)


def test_the_console_shows_our_warnings_and_everything_with_verbose():
    assert console_shows(_record("ray_distill.pipeline", logging.WARNING), verbose=False)
    assert not console_shows(_record("ray_distill.pipeline", logging.INFO), verbose=False)
    for library in ("ray.data", "vllm", "mlflow.transformers", "py.warnings", "math_verify"):
        assert not console_shows(_record(library, logging.WARNING), verbose=False)
        assert console_shows(_record(library, logging.INFO), verbose=True)


def test_library_logs_worker_lines_and_warnings_go_to_the_file_only(tmp_path, monkeypatch, capsys):
    import mlflow  # noqa: F401 - MLflow's console handler (to a wrapper of stderr) exists before the job log

    monkeypatch.setenv("RD_TEST_API_KEY", "sk-canary-0123456789abcdef")
    out = io.StringIO()
    log = JobLog(str(tmp_path / "job.log"), verbose=False, console=Console(file=out, width=100)).install()
    log.announce()
    try:
        logging.getLogger("ray_distill.pipeline").info("an info line of ours")
        logging.getLogger("ray_distill.pipeline").warning("a warning that needs the user")
        logging.getLogger("ray.data").info("Dataset execution finished")
        logging.getLogger("mlflow.transformers").warning("model card could not be retrieved")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("a library's deprecation", DeprecationWarning, stacklevel=1)
        from ray._private import worker

        batch = {"pid": 7, "ip": "127.0.0.1", "localhost": "127.0.0.1", "actor_name": "RayTrainWorker",
                 "lines": [STEP_FORMAT % (10, 100, 1.5, 1e-3, 900.0), "key sk-canary-0123456789abcdef"]}
        worker.print_worker_logs(batch, out)
        assert log.last_step == (10, 100, 1.5, 900.0)
    finally:
        log.close()
    shown = out.getvalue() + capsys.readouterr().err  # what Rich printed and what a library wrote to stderr
    assert "a warning that needs the user" in shown and f"log: {log.path}" in shown
    for hidden in ("an info line of ours", "Dataset execution", "model card", "deprecation", "step 10/100"):
        assert hidden not in shown, hidden
    written = (tmp_path / "job.log").read_text()
    for line in ("an info line of ours", "a warning that needs the user", "Dataset execution finished",
                 "model card could not be retrieved", "a library's deprecation", "step 10/100 loss 1.5000"):
        assert line in written, line
    assert "sk-canary-0123456789abcdef" not in written + shown  # forwarded lines are redacted too
    from ray._private import worker

    assert not getattr(worker.print_worker_logs, "original", None)  # closed: Ray's printer is back


def _ray_console_handlers() -> list:
    from ray_distill.console import _to_terminal

    return [h for h in logging.getLogger("ray.data").handlers if _to_terminal(h)]


def test_verbose_keeps_the_libraries_console_handlers_and_still_writes_the_file(tmp_path):
    import ray.data  # noqa: F401 - Ray Data sets up its console handler on import

    before = _ray_console_handlers()
    assert before
    out = io.StringIO()
    log = JobLog(str(tmp_path / "job.log"), verbose=True, console=Console(file=out, width=100)).install()
    try:
        assert _ray_console_handlers() == before  # Ray Data still prints live
        logging.getLogger("ray_distill.pipeline").info("an info line of ours")
        from ray._private import worker

        worker.print_worker_logs({"pid": 7, "ip": "a", "localhost": "a", "lines": ["a worker line"]}, out)
    finally:
        log.close()
    assert "an info line of ours" in out.getvalue() and "a worker line" in out.getvalue()
    assert "a worker line" in (tmp_path / "job.log").read_text()


def test_quiet_takes_the_libraries_console_handlers_and_gives_them_back(tmp_path):
    import ray.data  # noqa: F401

    before = _ray_console_handlers()
    log = JobLog(str(tmp_path / "job.log"), verbose=False, console=Console(file=io.StringIO())).install()
    try:
        assert _ray_console_handlers() == []
    finally:
        log.close()
    assert _ray_console_handlers() == before


NATIVE = r"""
import os, sys
from rich.console import Console
from ray_distill.console import JobLog

path, run_dir, verbose = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
log = JobLog(path, verbose, Console(stderr=True)).install()
log.capture_native_stderr()
os.write(2, b"native before the move\n")  # as Ray's C++ core worker writes: past Python
print("python line", file=sys.stderr, flush=True)
log.announce(run_dir)  # the file moves into the run directory: fd 2 follows it
os.write(2, b"native after the move\n")
Console(stderr=True).print("console line")
log.close(keep_worker_lines=True)  # the CLI's way: the process ends next
os.write(2, b"native at exit\n")
"""


def test_what_native_code_writes_to_stderr_goes_to_the_log_file(tmp_path):
    """The CLI's process (console.JobLog.capture_native_stderr): fd 2 goes to the job's log file, moved with it, until
    the process exits; Python's stderr, the console and the printed log path stay on the terminal. With -v nothing
    is captured."""
    import subprocess
    import sys

    for verbose in (False, True):
        run_dir = tmp_path / f"run{int(verbose)}"
        proc = subprocess.run([sys.executable, "-c", NATIVE, str(tmp_path / f"job{int(verbose)}.log"), str(run_dir),
                               str(int(verbose))], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        (logged,) = [p.read_text() for p in (run_dir / "logs").iterdir()]
        natives = ("native before the move", "native after the move", "native at exit")
        assert "python line" in proc.stderr and "console line" in proc.stderr and "log: " in proc.stderr
        if verbose:
            assert all(n in proc.stderr for n in natives) and not any(n in logged for n in natives)
        else:
            assert not any(n in proc.stderr for n in natives), proc.stderr
            assert all(n in logged for n in natives), logged
