"""Run untrusted Python programs against test cases, one sandboxed process per test.

    sandbox = Sandbox(Limits(timeout_s=2))
    results = sandbox.run_tests(program, {"type": "stdio", "cases": [{"input": "1 2\\n", "output": "3"}]})
    results[0].passed, results[0].reason   # True, ""  -- or False, "timeout" / "wrong_output" / ...

Each test runs with a clean environment and no network, in a private ``/tmp`` (its working directory,
``HOME`` and ``TMPDIR``) that is a tmpfs of at most ``Limits.max_tmp_bytes`` (so at most that many bytes and,
every non-empty file taking a page, at most ``max_tmp_bytes / 4096`` files with content), gone when the test
ends. The program, its call arguments and the launcher's result travel through a read-only input directory
and an inherited file descriptor, so nothing the program writes lands on the host's disks:

- ``bwrap`` (bubblewrap, what ``backend: auto`` means): new user, network, pid, ipc and uts namespaces, the
  root file system bound read-only, its own ``/proc`` (only the sandbox's processes), the capped ``/tmp``
  (``--size``), killed with its parent;
- ``unshare --user --map-root-user --net --pid --fork --kill-child --mount-proc`` (util-linux), only when
  configured explicitly (``backend: unshare``; a warning is logged once): new user, network, pid and mount
  namespaces with a fresh ``/proc`` (the program cannot read other processes' command lines or
  environments), and the capped ``/tmp`` (a tmpfs with ``size`` and ``nr_inodes`` that the launcher mounts
  in its private mount namespace). It does not make the root file system read-only: the program can write
  wherever its uid may.

``auto`` never falls back from bwrap to unshare on its own: when bwrap does not work here,
:class:`SandboxUnavailable` says why and names both fixes (install/enable bubblewrap, or accept the weaker
isolation with ``format.code.backend: unshare``). Code is never run unsandboxed.

When the caller is root, the sandbox runs as an unprivileged uid (65534, ``nobody``): root ignores
``RLIMIT_NPROC``. A non-root caller (e.g. a Ray worker as ``ray`` in the KubeRay image) runs it as itself;
both backends need unprivileged user namespaces (``kernel.unprivileged_userns_clone``; seccomp/AppArmor
profiles of some container runtimes forbid them: then the sandbox refuses to run). Inside, a launcher sets
rlimits (CPU seconds, address space, processes, file size, open files, no core files) and then runs the
program in the same interpreter. A wall-clock timeout kills the whole process group (and with it the pid
namespace). Stdout and stderr go to files whose size ``RLIMIT_FSIZE`` caps.

Test styles (the canonical form of ``ray_distill.data.questions.normalize_tests``):

- ``{"type": "stdio", "cases": [{"input": str, "output": str}]}``: stdin -> stdout, compared as
  whitespace-separated tokens (as competitive-programming judges do);
- ``{"type": "call", "fn_name": str, "cases": [{"args": list, "expected": any}]}``: a harness runs the
  program as a module, calls ``fn_name(*args)`` (or ``Solution().fn_name`` LeetCode-style) and
  compares JSON-normalised values.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# Per-test failure reasons (stable strings).
TIMEOUT = "timeout"
RUNTIME_ERROR = "runtime_error"
WRONG_OUTPUT = "wrong_output"
MEMORY_LIMIT = "memory_limit"
OUTPUT_LIMIT = "output_limit"
SANDBOX_ERROR = "sandbox_error"

BACKENDS = ("bwrap", "unshare")
SANDBOX_UID = 65534  # "nobody": the uid a root caller drops to
_CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"
_PROGRAM, _CALL = "solution.py", "_call.json"
_STARTED = b"S"  # the launcher's first byte on the result descriptor: it ran (tells a sandbox failure from a crash)
_PRIVATE_TMP = "/tmp"  # the program's working directory, HOME and TMPDIR inside the sandbox (a capped tmpfs)
_DETAIL_CHARS = 300

# Runs inside the sandbox: read the inputs, (unshare) mount the capped private /tmp, move into it, set
# rlimits, then run the program as __main__ (stdio) or as a module whose function is called (call).
# The first byte on the result descriptor says the launcher got that far; the call result follows it.
_LAUNCHER = r"""
import json, os, resource, runpy, sys
cfg = json.loads(sys.argv[1])
inputs = {}
for name in os.listdir(cfg["inputs"]):
    with open(os.path.join(cfg["inputs"], name), "rb") as f:
        inputs[name] = f.read()
if cfg["mount_tmp"]:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    opts = "size=%d,nr_inodes=%d,mode=700" % (cfg["tmp_bytes"], max(16, cfg["tmp_bytes"] // 4096))
    if libc.mount(b"tmpfs", cfg["tmp"].encode(), b"tmpfs", 2 | 4, opts.encode()) != 0:  # MS_NOSUID | MS_NODEV
        raise OSError(ctypes.get_errno(), "cannot mount the private tmp: " + os.strerror(ctypes.get_errno()))
os.chdir(cfg["tmp"])
for name, data in inputs.items():
    with open(name, "wb") as f:
        f.write(data)
out = cfg["result_fd"]
for name, (soft, hard) in cfg["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (soft, hard))
os.write(out, b"S")
sys.argv = ["solution.py"]
sys.path.insert(0, ".")
if cfg["mode"] == "stdio":
    runpy.run_path("solution.py", run_name="__main__")
else:
    with open("_call.json") as f:
        call = json.load(f)
    ns = runpy.run_path("solution.py", run_name="solution")
    fn = ns.get(call["fn_name"])
    if fn is None and isinstance(ns.get("Solution"), type):
        fn = getattr(ns["Solution"](), call["fn_name"], None)
    if not callable(fn):
        raise NameError("function %r is not defined" % call["fn_name"])
    value = fn(*call["args"])
    try:
        text = json.dumps({"value": value})
    except (TypeError, ValueError) as err:
        text = json.dumps({"unserializable": "%s: %s" % (type(value).__name__, err)})
    os.write(out, text.encode())
"""


class SandboxUnavailable(RuntimeError):
    """No working sandbox on this machine; ``str(err)`` says what was tried and how to fix it."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0  # wall clock per test
    memory_mb: int = 1024  # address space
    max_processes: int = 16  # tasks (processes and threads) inside the sandbox
    max_output_bytes: int = 1 << 20  # stdout, stderr and any file the program writes
    max_open_files: int = 64
    max_tmp_bytes: int = 16 << 20  # everything the program writes to its private /tmp (tmpfs size)

    @property
    def cpu_s(self) -> int:
        """CPU-second cap: the wall clock normally fires first."""
        return math.ceil(self.timeout_s) + 1


@dataclass(frozen=True)
class TestResult:
    passed: bool
    reason: str  # "" when passed, else one of the reason constants above
    detail: str  # short human-readable context (last stderr line, expected vs got)
    seconds: float


@dataclass(frozen=True)
class _Run:
    returncode: int
    timed_out: bool
    started: bool
    stdout: str
    stderr: str
    output_bytes: int
    result: str | None  # the call harness's JSON, None when absent


def outputs_match(got: str, expected: str) -> bool:
    """Whitespace-normalised token match (trailing spaces and newlines do not matter)."""
    return got.split() == expected.split()


def values_match(got, expected) -> bool:
    """JSON-normalised equality (tuples == lists); an expected ``[x]`` also accepts ``x`` (APPS/TACO
    call-based outputs wrap the return value in a list)."""
    got, expected = _json_normal(got), _json_normal(expected)
    return got == expected or (isinstance(expected, list) and len(expected) == 1 and got == expected[0])


def _json_normal(value):
    return json.loads(json.dumps(value))


@functools.lru_cache(maxsize=None)
def detect_backend(prefer: str = "auto", python: str | None = None) -> str:
    """The backend that runs a trivial program here, or :class:`SandboxUnavailable`. ``prefer`` names one
    backend to use; ``"auto"`` means bwrap and never silently downgrades to the weaker ``unshare``: that
    takes an explicit ``backend: unshare``."""
    candidates = ("bwrap",) if prefer == "auto" else (prefer,)
    if prefer not in ("auto", *BACKENDS):
        raise ValueError(f"unknown sandbox backend {prefer!r}; expected auto or one of {BACKENDS}")
    errors = []
    for backend in candidates:
        if shutil.which(backend) is None:
            errors.append(f"{backend}: not installed")
            continue
        probe_box = Sandbox(Limits(timeout_s=10), backend=backend, python=python)
        probe_box._resolved = backend  # probe this backend without detecting again
        probe = probe_box._execute("print(6 * 7)", "stdio", "", None)
        if probe.returncode == 0 and probe.stdout.strip() == "42":
            if backend == "unshare":
                logger.warning("sandbox: using 'unshare' as configured (no network, own /proc, capped /tmp, but the "
                               "root file system is not read-only); bwrap isolates more")
            return backend
        errors.append(f"{backend}: {_last_line(probe.stderr) or f'exit code {probe.returncode}'}")
    if prefer == "auto":
        raise SandboxUnavailable(
            f"no working code sandbox ({'; '.join(errors)}): backend 'auto' needs bubblewrap (apt-get install -y "
            f"bubblewrap) with unprivileged user namespaces; to accept weaker isolation (writable root file system) "
            f"set format.code.backend: unshare explicitly")
    raise SandboxUnavailable(f"no working code sandbox ({'; '.join(errors)}); install bubblewrap "
                             f"(apt-get install -y bubblewrap) or util-linux 'unshare' with user namespaces enabled")


def default_python() -> str:
    """An interpreter the sandbox uid can execute: this one, else ``python3`` on the standard PATH
    (a root caller's interpreter may live under an unreadable home directory)."""
    if os.geteuid() != 0 or _world_executable(sys.executable):
        return sys.executable
    found = shutil.which("python3", path=_CLEAN_PATH)
    if found is None or not _world_executable(found):
        raise SandboxUnavailable(f"no python3 that uid {SANDBOX_UID} can execute (set the sandbox 'python')")
    return found


def _world_executable(path: str) -> bool:
    real = os.path.realpath(path)
    if not os.path.isfile(real) or os.stat(real).st_mode & 0o005 != 0o005:
        return False
    parent = os.path.dirname(real)
    while parent != os.path.dirname(parent):
        if os.stat(parent).st_mode & 0o001 == 0:
            return False
        parent = os.path.dirname(parent)
    return True


class Sandbox:
    """Runs programs against tests; ``backend`` is ``"auto"``, ``"bwrap"`` or ``"unshare"``."""

    def __init__(self, limits: Limits = Limits(), backend: str = "auto", python: str | None = None):
        self.limits = limits
        self.python = python or default_python()
        self.backend = backend
        self._resolved: str | None = None

    def resolve(self) -> str:
        """The backend in use (detected and checked once per process)."""
        if self._resolved is None:
            self._resolved = detect_backend(self.backend, self.python)
        return self._resolved

    def run_tests(self, program: str, tests: dict, stop_on_failure: bool = True) -> list[TestResult]:
        """One :class:`TestResult` per case, in order; with ``stop_on_failure`` the list ends at the
        first failing case."""
        results = []
        for case in tests["cases"]:
            if tests["type"] == "stdio":
                result = self.run_stdio_case(program, case["input"], case["output"])
            elif tests["type"] == "call":
                result = self.run_call_case(program, tests["fn_name"], case["args"], case["expected"])
            else:
                raise ValueError(f"unknown test type {tests['type']!r}")
            results.append(result)
            if stop_on_failure and not result.passed:
                break
        return results

    def run_stdio_case(self, program: str, stdin: str, expected: str) -> TestResult:
        start = time.perf_counter()
        run = self._execute(program, "stdio", stdin, None)
        failure = _failure(run, self.limits)
        if failure is None and not outputs_match(run.stdout, expected):
            failure = (WRONG_OUTPUT, f"expected {_short(expected)!r}, got {_short(run.stdout)!r}")
        return _result(failure, start)

    def run_call_case(self, program: str, fn_name: str, args: list, expected) -> TestResult:
        start = time.perf_counter()
        run = self._execute(program, "call", "", {"fn_name": fn_name, "args": args})
        failure = _failure(run, self.limits)
        if failure is None:
            failure = _compare_call(run.result, expected)
        return _result(failure, start)

    def _execute(self, program: str, mode: str, stdin: str, call: dict | None) -> _Run:
        work = tempfile.mkdtemp(prefix="ray-distill-sandbox-")
        try:
            return self._execute_in(work, program, mode, stdin, call)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _execute_in(self, work: str, program: str, mode: str, stdin: str, call: dict | None) -> _Run:
        """``work`` holds the inputs (read-only inside); the program runs in the private, capped /tmp."""
        drop = os.geteuid() == 0
        _write(os.path.join(work, _PROGRAM), program)
        if call is not None:
            _write(os.path.join(work, _CALL), json.dumps(call))
        os.chmod(work, 0o755)
        for name in os.listdir(work):
            os.chmod(os.path.join(work, name), 0o444)
        lim = self.limits
        rlimits = {
            "RLIMIT_CPU": (lim.cpu_s, lim.cpu_s + 1),
            "RLIMIT_AS": (lim.memory_mb << 20,) * 2,
            "RLIMIT_NPROC": (lim.max_processes,) * 2,
            "RLIMIT_FSIZE": (lim.max_output_bytes,) * 2,
            "RLIMIT_NOFILE": (lim.max_open_files,) * 2,
            "RLIMIT_CORE": (0, 0),
        }
        env = {"PATH": _CLEAN_PATH, "HOME": _PRIVATE_TMP, "TMPDIR": _PRIVATE_TMP, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        ids = {"user": SANDBOX_UID, "group": SANDBOX_UID, "extra_groups": []} if drop else {}
        with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr, \
                tempfile.TemporaryFile() as fres:
            fin.write(stdin.encode("utf-8"))
            fin.seek(0)
            cfg = {"mode": mode, "rlimits": rlimits, "inputs": work, "tmp": _PRIVATE_TMP, "tmp_bytes": lim.max_tmp_bytes,
                   "mount_tmp": self.resolve() == "unshare", "result_fd": fres.fileno()}
            inner = [self.python, "-I", "-c", _LAUNCHER, json.dumps(cfg)]
            proc = subprocess.Popen(self._wrap(inner, work), cwd="/", env=env, stdin=fin, stdout=fout, stderr=ferr,
                                    start_new_session=True, close_fds=True, pass_fds=(fres.fileno(),), **ids)
            timed_out = False
            try:
                proc.wait(timeout=lim.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(proc)
            out, err, res = _read(fout), _read(ferr), _read(fres, lim.max_output_bytes + 1)
            started = res.startswith(_STARTED)
            result = res[1:].decode("utf-8", "replace") if started and len(res) > 1 else None
            return _Run(returncode=proc.returncode, timed_out=timed_out, started=started,
                        stdout=out.decode("utf-8", "replace"), stderr=err.decode("utf-8", "replace"),
                        output_bytes=max(len(out), len(err), len(result or "")), result=result)

    def _wrap(self, inner: list[str], work: str) -> list[str]:
        if self.resolve() == "bwrap":
            return ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--dev", "/dev",
                    "--proc", "/proc", "--size", str(self.limits.max_tmp_bytes), "--perms", "0700", "--tmpfs", _PRIVATE_TMP,
                    "--ro-bind", work, work, "--chdir", "/", "--", *inner]
        return ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--mount-proc",
                "--", *inner]


def _failure(run: _Run, lim: Limits) -> tuple[str, str] | None:
    """(reason, detail) when the run did not finish cleanly, else None."""
    if run.timed_out:
        return TIMEOUT, f"wall clock over {lim.timeout_s:g} s"
    if run.output_bytes >= lim.max_output_bytes:
        return OUTPUT_LIMIT, f"output reached {lim.max_output_bytes} bytes"
    if not run.started:
        return SANDBOX_ERROR, _last_line(run.stderr) or f"sandbox exit code {run.returncode}"
    if run.returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGKILL):
        return TIMEOUT, f"CPU time over {lim.cpu_s} s"
    last = _last_line(run.stderr)
    if "MemoryError" in last:
        return MEMORY_LIMIT, f"address space over {lim.memory_mb} MB"
    if run.returncode != 0:
        return RUNTIME_ERROR, last or f"exit code {run.returncode}"
    return None


def _compare_call(result: str | None, expected) -> tuple[str, str] | None:
    if result is None:
        return RUNTIME_ERROR, "the harness wrote no result"
    try:
        payload = json.loads(result)
    except json.JSONDecodeError:
        return RUNTIME_ERROR, "the harness result is not valid JSON"
    if not isinstance(payload, dict) or "value" not in payload:
        return WRONG_OUTPUT, f"return value is not JSON: {str(payload)[:_DETAIL_CHARS]}"
    if not values_match(payload["value"], expected):
        return WRONG_OUTPUT, f"expected {_short(json.dumps(expected))}, got {_short(json.dumps(payload['value']))}"
    return None


def _result(failure: tuple[str, str] | None, start: float) -> TestResult:
    seconds = time.perf_counter() - start
    if failure is None:
        return TestResult(True, "", "", seconds)
    return TestResult(False, failure[0], failure[1], seconds)


def _kill_group(proc: subprocess.Popen, grace_s: float = 2.0) -> None:
    """SIGKILL the sandbox's process group (its pid namespace dies with it), reap the leader and
    wait (at most ``grace_s``) until no process of the group is left."""
    deadline = time.monotonic() + grace_s
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process of group ``pgid`` remains."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _read(f, limit: int = -1) -> bytes:
    f.seek(0)
    return f.read(limit)


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")


def _last_line(text: str) -> str:
    """The last exception line of ``text`` (``ValueError: ...``), else its last non-blank line.

    A program that forks writes several tracebacks into one stderr file, and a process killed when the
    sandbox ends can leave one cut short, so the last line may be a traceback frame; the error is the
    last line that names an exception."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if _EXCEPTION_LINE.match(line)]
    line = errors[-1] if errors else lines[-1] if lines else ""
    return line[:_DETAIL_CHARS]


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "..."
