"""What a job shows on the console, and the log file that gets everything else.

By default the console carries the job's own lines: one ``✔`` line per finished stage (a live spinner with
the elapsed time while it runs, in a terminal), a progress bar while Ray Train trains (step / total, loss,
tokens/s, ETA), the warnings of ray-distill itself, and the closing tables. Everything else — ray-distill's
info lines, Ray, Ray Data, the lines Ray forwards from its workers (Ray Train's workers, vLLM), transformers,
MLflow, math-verify, Python warnings — goes to the job's log file (redacted like every log line), whose path
is printed once; ``-v`` shows it all live as well. The file is logged to the MLflow run as an artifact.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from ray_distill.redact import RedactingFilter, drop_cleaner_noise, redact_log_batch

# Loggers that do not propagate to the root logger (Ray configures its own handlers on them).
OWN_HANDLER_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "mlflow")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The line rank 0 of a training launch logs every ``log_every`` steps (training.loop.EpochRunner.log_step).
STEP_LINE = re.compile(r"step (\d+)/(\d+) loss ([0-9.naif]+) lr \S+ tokens/s ([0-9.]+)")


def parse_step_line(line: str) -> tuple[int, int, float, float] | None:
    """``(step, total, loss, tokens_per_s)`` of a training step line, else None."""
    m = STEP_LINE.search(line)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), float(m.group(3)), float(m.group(4))


def console_shows(record: logging.LogRecord, verbose: bool) -> bool:
    """Whether a log record reaches the console: everything with ``-v``; else ray-distill's own warnings and
    errors (what needs the user's action). The log file gets every record either way."""
    if verbose:
        return True
    return record.name.split(".")[0] == "ray_distill" and record.levelno >= logging.WARNING


class _ConsoleFilter(logging.Filter):
    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        return console_shows(record, self.verbose)


@dataclass
class JobLog:
    """The log file of one command and the console's share of what is logged (see the module doc)."""

    path: str
    verbose: bool
    console: Console
    _file: object = None
    _handlers: list = field(default_factory=list)
    _removed: list = field(default_factory=list)
    live: Progress | None = None  # in a terminal: the running stages and the training bar
    last_step: tuple | None = None  # (step, total, loss, tokens/s) of the last training step line
    _train_task: int | None = None
    _to_file: logging.Handler | None = None
    _propagate: dict = field(default_factory=dict)
    _native: int | None = None  # while fd 2 goes to the file (capture_native_stderr): the terminal's, duplicated
    _stderr: object = None  # the sys.stderr it replaced

    # ------------------------------------------------------------------ logging

    def install(self) -> JobLog:
        to_file = logging.FileHandler(self.path, encoding="utf-8")  # the CLI appends a failure's traceback here
        self._file = to_file.stream
        to_file.setFormatter(logging.Formatter(LOG_FORMAT))
        to_file.addFilter(RedactingFilter())
        to_console = RichHandler(console=self.console, show_path=False)
        to_console.addFilter(RedactingFilter())
        to_console.addFilter(_ConsoleFilter(self.verbose))
        root = logging.getLogger()
        for h in list(root.handlers):  # a previous command of this process (tests run several)
            if getattr(h, "ray_distill", False):
                root.removeHandler(h)
        for h in (to_file, to_console):
            h.ray_distill = True
            root.addHandler(h)
            self._handlers.append((root, h))
        root.setLevel(logging.INFO)
        self._to_file = to_file
        self.route_libraries()
        logging.captureWarnings(True)  # warnings.warn(...) -> the "py.warnings" logger -> the file
        if not self.verbose:
            _quiet_progress_bars()
        self._wrap_worker_logs()
        if self.console.is_terminal:
            self.live = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                 TimeRemainingColumn(), console=self.console, transient=True)
            self.live.start()
        global _ACTIVE
        _ACTIVE = self
        return self

    def capture_native_stderr(self) -> None:
        """What C and C++ code of this process writes to file descriptor 2, past Python — Ray's core worker
        ("core_worker.cc:…" lines, one per Ray Data actor pool, 300-400 characters each) — goes to the log file;
        Python's ``sys.stderr`` (the console, a traceback) moves to a copy of the terminal's descriptor, so what
        Python prints stays where it was. For the CLI's own process (``ray_distill.cli.main``): fd 2 stays on the
        file until the process exits (Ray's core logs at exit too). Not with ``-v``: everything live, as before."""
        if self.verbose or self._native is not None or self._file is None:
            return
        sys.stderr.flush()
        self._native, self._stderr = os.dup(2), sys.stderr
        sys.stderr = open(os.dup(self._native), "w", buffering=1, encoding=getattr(self._stderr, "encoding", None),
                          errors="backslashreplace")
        os.dup2(self._file.fileno(), 2)

    def _release_native_stderr(self) -> None:
        if self._native is None:
            return
        sys.stderr.flush()
        os.dup2(self._native, 2)
        os.close(self._native)
        sys.stderr.close()
        sys.stderr, self._native, self._stderr = self._stderr, None, None

    def announce(self, run_dir: str | None = None) -> None:
        """Once the job starts its work (its storage checked): move the log file into ``<run_dir>/logs`` (a
        local storage; a remote one gets it through MLflow) and print its path once. A refusal before that is
        one line that names the file itself, and leaves nothing in the storage."""
        final_dir = log_dir_for(run_dir) if run_dir else None
        if final_dir and self._to_file is not None:
            final = os.path.join(final_dir, os.path.basename(self.path))
            handler = self._to_file
            handler.acquire()
            try:
                handler.flush()
                shutil.copyfile(self.path, final)
                handler.close()
                os.remove(self.path)
                handler.baseFilename = self.path = final
                handler.stream = handler._open()
                self._file = handler.stream
                if self._native is not None:  # fd 2 follows the file
                    os.dup2(self._file.fileno(), 2)
            finally:
                handler.release()
        self.console.print(f"log: {self.path}", highlight=False, soft_wrap=True)

    def close(self, keep_worker_lines: bool = False) -> None:
        """Give the loggers back. ``keep_worker_lines`` (the CLI, whose process ends next): Ray's forwarded
        worker lines still go to the file until the process exits (Ray flushes its workers' last lines at
        exit), not to the console."""
        global _ACTIVE
        if _ACTIVE is self:
            _ACTIVE = None
        if self.live is not None:
            self.live.stop()
            self.live = None
        if not keep_worker_lines:
            self._unwrap_worker_logs()
            self._release_native_stderr()
        for lg, h in self._handlers:
            lg.removeHandler(h)
        for lg, h in self._removed:
            lg.addHandler(h)
        self._removed = []
        for name, propagate in self._propagate.items():
            logging.getLogger(name).propagate = propagate
        self._propagate = {}
        logging.captureWarnings(False)
        if not keep_worker_lines:
            for _, h in self._handlers:
                h.close()
            self._file = None
        self._handlers = []

    def route_libraries(self) -> None:
        """The loggers that keep handlers of their own (Ray's, MLflow's): the file too, and (without ``-v``) not
        the console. Idempotent; ``ray.init`` resets Ray's, so :func:`ray_distill.runtime.init_ray` calls it
        again after."""
        import mlflow  # noqa: F401 - both add their console handlers on import: strip them now
        import ray.data  # noqa: F401

        for name in OWN_HANDLER_LOGGERS:
            lg = logging.getLogger(name)
            if self._to_file not in lg.handlers:
                lg.addHandler(self._to_file)
                self._handlers.append((lg, self._to_file))
            if not self.verbose:  # their console handlers: the file has the records now
                # and when ray.init clears Ray's handlers, its records still reach the root's (file) handler
                self._propagate.setdefault(name, lg.propagate)
                lg.propagate = name == "ray"
                for h in list(lg.handlers):
                    if type(h).__name__ != "SessionFileHandler" and h is not self._to_file and _to_terminal(h):
                        lg.removeHandler(h)
                        self._removed.append((lg, h))

    # ------------------------------------------------------------------ worker lines

    def worker_lines(self, data: dict, print_worker_logs, print_file) -> None:
        """What Ray forwards from a worker (``print_worker_logs(data, file)``): redacted; training step lines
        move the training bar; everything goes to the log file, and to the console with ``-v`` (but for known
        noise, :func:`ray_distill.redact.drop_cleaner_noise`)."""
        data = redact_log_batch(drop_cleaner_noise(data))
        for line in data.get("lines", []):
            step = parse_step_line(line)
            if step:
                self.training_step(*step)
        if self._file and not self._file.closed:
            print_worker_logs(data, self._file)
        if self.verbose:
            print_worker_logs(data, print_file)

    def _wrap_worker_logs(self) -> None:
        try:
            from ray._private import worker
        except ImportError:  # pragma: no cover - Ray is a dependency
            return
        original = getattr(worker.print_worker_logs, "original", worker.print_worker_logs)

        def printer(data, print_file, ignore_prefix=False):
            self.worker_lines(data, lambda d, f: original(d, f, ignore_prefix), print_file)

        printer.original = original
        printer.redacting = True  # runtime.redact_forwarded_logs leaves it alone
        worker.print_worker_logs = printer

    @staticmethod
    def _unwrap_worker_logs() -> None:
        from ray._private import worker

        original = getattr(worker.print_worker_logs, "original", None)
        if original is not None:
            worker.print_worker_logs = original

    # ------------------------------------------------------------------ live lines (a terminal only)

    def training_step(self, step: int, total: int, loss: float, tokens_per_s: float) -> None:
        """The training bar: step / total, loss, tokens/s, elapsed and ETA of the current launch."""
        self.last_step = (step, total, loss, tokens_per_s)
        if self.live is None:
            return
        info = f"loss {loss:.3f}  {tokens_per_s:,.0f} tok/s"
        if self._train_task is None:
            self._train_task = self.live.add_task("  training steps", total=total, info=info)
        task = next(t for t in self.live.tasks if t.id == self._train_task)
        if total != task.total or step < task.completed:  # the next launch (smoke-test students, a resume)
            self.live.reset(self._train_task, total=total)
        self.live.update(self._train_task, completed=step, info=info)

    def stage_started(self, name: str) -> int | None:
        if self.live is None:
            return None
        return self.live.add_task(name, total=None, info="")

    def stage_ended(self, task: int | None) -> None:
        if self.live is None:
            return
        if task is not None:
            self.live.remove_task(task)
        if self._train_task is not None:
            self.live.remove_task(self._train_task)
            self._train_task = None


_ACTIVE: JobLog | None = None


def active() -> JobLog | None:
    """The job log of the command running in this process, if any (the stage runner's live lines)."""
    return _ACTIVE


def _to_terminal(handler: logging.Handler) -> bool:
    """A library's console handler: a stream handler that is not a file (MLflow's writes to a wrapper of
    stderr, ``mlflow.utils.logging_utils.MlflowLoggingStream``, not to ``sys.stderr`` itself)."""
    if isinstance(handler, logging.FileHandler) or not isinstance(handler, logging.StreamHandler):
        return False
    stream = handler.stream
    return (stream in (sys.stderr, sys.stdout) or getattr(stream, "name", "") in ("<stderr>", "<stdout>")
            or type(stream).__name__ == "MlflowLoggingStream")


def _quiet_progress_bars() -> None:
    """Library progress bars in this process: off (Ray Data's per-operator bars, Hugging Face downloads,
    transformers' "Loading weights")."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
    except ImportError:  # pragma: no cover
        pass


def log_dir_for(run_dir: str) -> str | None:
    """Where a command's log file ends up: ``<run_dir>/logs`` on a local storage; None when the storage is
    remote or not writable (the file stays in the local temporary directory and reaches the run through
    MLflow)."""
    if "://" not in run_dir or run_dir.startswith("file://"):
        path = os.path.join(run_dir.removeprefix("file://"), "logs")
        try:
            os.makedirs(path, exist_ok=True)
            return path
        except OSError:
            return None
    return None


def open_job_log(kind: str, verbose: bool, console: Console) -> JobLog:
    """Start the command's log file (a local temporary file until :meth:`JobLog.announce` moves it into the run
    directory) and route the logs (see the module doc)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(tempfile.mkdtemp(prefix="ray-distill-log-"), f"{kind}-{stamp}-{os.getpid()}.log")
    return JobLog(path, verbose, console).install()
