"""Run untrusted Python programs against test cases, one sandboxed process per test.

    sandbox = Sandbox(Limits(timeout_s=2))
    results = sandbox.run_tests(program, {"type": "stdio", "cases": [{"input": "1 2\\n", "output": "3"}]})
    results[0].passed, results[0].reason   # True, ""  -- or False, "timeout" / "wrong_output" / ...

What the program sees (both backends, see docs/sandbox.md): a root file system of its own, read-only, that
holds only what the interpreter needs -- ``/usr``, ``/bin`` and ``/lib*`` (or their merged-/usr symlinks), the
interpreter's prefixes (``sys.prefix``, ``sys.base_prefix``: a venv and the Python it was made from), the
dynamic loader's files and ``/etc/localtime`` -- a private ``/tmp`` (its working directory, ``HOME`` and
``TMPDIR``), a minimal read-only ``/dev`` (null, zero, full, random, urandom; bwrap adds tty and pts) with a
private ``/dev/shm``, and its
own ``/proc`` (only the sandbox's processes). ``/tmp`` and ``/dev/shm`` are tmpfs of at most
``Limits.max_tmp_bytes`` each, gone when the test ends. Nothing of ``/home``, ``/root``, ``/run``, ``/var``,
``/srv``, ``/mnt``, the rest of ``/etc``, the Ray session directory, the store or any Unix socket file is
there, and the venv is read-only. No network (its own network namespace: no TCP/UDP, no abstract Unix
sockets of the host), a clean environment, an unprivileged uid (65534, ``nobody``) inside. The program,
its call arguments and the launcher's result travel through inherited file descriptors.

- ``bwrap`` (bubblewrap >= 0.8.0, what ``backend: auto`` means): new user, network, pid, ipc, uts and cgroup
  namespaces, uid/gid 65534 inside, no further user namespaces (``--disable-userns``: a nested one could
  mount an uncapped tmpfs), ``--size``-capped tmpfs, killed with its parent. ``auto`` checks the version and
  names the fix in one line when it is older (Ubuntu 22.04 ships 0.6; ``scripts/install_bwrap.sh``).
- ``unshare`` (util-linux), only when configured explicitly (``backend: unshare``) and only for a root
  caller: new mount, network, pid, ipc and uts namespaces; the launcher, still root in the private mount
  namespace, builds the same read-only view (a tmpfs root with read-only binds, capped ``/tmp`` and
  ``/dev/shm`` with ``nr_inodes``, its own ``/proc``), chroots into it and drops to uid/gid 65534 with no
  supplementary groups and ``no_new_privs``. A non-root caller cannot build that view without bwrap and is
  refused with one line that says so.

``auto`` never falls back from bwrap to unshare: when bwrap does not work here, :class:`SandboxUnavailable`
says why in one line and how to fix it. Code is never run unsandboxed.

Users and groups: a root caller starts the sandbox as uid/gid 65534 with no supplementary groups (root
ignores ``RLIMIT_NPROC``). A non-root caller (a Ray worker as ``ray`` on KubeRay, ``ubuntu`` on AWS) runs it
as itself, mapped to 65534 inside; the kernel lets no unprivileged process shed its supplementary groups
(they show as ``nogroup`` inside), and they grant nothing there: no file of the host beyond the read-only
system and interpreter directories is mounted. bwrap needs unprivileged user namespaces
(``kernel.unprivileged_userns_clone``; the seccomp/AppArmor profiles of some container runtimes forbid
them: then the sandbox refuses to run). Inside, a launcher sets rlimits (CPU seconds, address space,
processes, file size, open files, no core files) and runs the program in the same interpreter. A
wall-clock timeout kills the whole process group (and with it the pid namespace). Stdout and stderr go to
files whose size ``RLIMIT_FSIZE`` caps.

What is kept of a failing run (``TestResult.detail``, stored in the graded Parquet and rejects files):
reason-shaped text only, never the program's output -- the name of a built-in exception (plus, for an
``OSError``, its errno and the system's message for it), the exit code or signal, the expected output of
the test (from the data set) with the shape of what the program printed (token count, first differing
token position) or returned (JSON type and length). The program chooses nothing stored beyond one of
Python's built-in exception names.

Test styles (the canonical form of ``ray_distill.data.questions.normalize_tests``):

- ``{"type": "stdio", "cases": [{"input": str, "output": str}]}``: stdin -> stdout, compared as
  whitespace-separated tokens (as competitive-programming judges do);
- ``{"type": "call", "fn_name": str, "cases": [{"args": list, "expected": any}]}``: a harness runs the
  program as a module, calls ``fn_name(*args)`` (or ``Solution().fn_name`` LeetCode-style) and
  compares JSON-normalised values.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import functools
import json
import logging
import math
import os
import random
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
KILLED = "killed"  # SIGKILL that was not the wall-clock timeout: the OOM killer (memory) or another signal
SANDBOX_ERROR = "sandbox_error"

BACKENDS = ("bwrap", "unshare")
BWRAP_MIN_VERSION = (0, 8, 0)  # --size (0.7.0) and --disable-userns (0.8.0)
BWRAP_HOWTO = ("apt-get install bubblewrap on Debian 12 / Ubuntu 24.04 or newer; elsewhere, e.g. Ubuntu 22.04 "
               "with 0.6, scripts/install_bwrap.sh builds it from source")
SANDBOX_UID = 65534  # "nobody": the uid the program has inside (and a root caller's uid outside)
_CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"
_PROGRAM, _CALL = "solution.py", "_call.json"
_STARTED = b"S"  # the launcher's first byte on the result descriptor: it ran (tells a sandbox failure from a crash)
_PRIVATE_TMP = "/tmp"  # the program's working directory, HOME and TMPDIR inside the sandbox (a capped tmpfs)
_DETAIL_CHARS = 300
# The host's system directories the interpreter needs (read-only; a merged-/usr symlink stays a symlink) and
# the few /etc files it reads: the dynamic loader's cache and configuration, the time zone.
_SYSTEM_DIRS = ("/usr", "/bin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime")
_DEVICES = ("null", "zero", "full", "random", "urandom")

# Runs inside the sandbox: read the inputs from their descriptors, (unshare) build the read-only view and
# drop to the sandbox uid, move into the private /tmp, set rlimits, then run the program as __main__
# (stdio) or as a module whose function is called (call). The first byte on the result descriptor says the
# launcher got that far; the call result follows it.
_LAUNCHER = r"""
import json, os, resource, runpy, sys
cfg = json.loads(sys.argv[1])
inputs = {}
for name, fd in cfg["inputs"].items():
    with os.fdopen(fd, "rb") as f:
        inputs[name] = f.read()
jail = cfg["jail"]
if jail:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC = 1, 2, 4, 8, 32, 4096, 16384

    def mount(src, dst, fstype, flags, data=""):
        if libc.mount(src.encode(), dst.encode(), fstype.encode(), flags, data.encode()) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "sandbox: cannot mount %s on %s: %s" % (src, dst, os.strerror(err)))

    def tmpfs(dst, mode):
        size = cfg["tmp_bytes"]
        opts = "size=%d,nr_inodes=%d,mode=%s" % (size, max(16, size // 4096), mode)
        mount("tmpfs", dst, "tmpfs", NOSUID | NODEV, opts)

    def ro_bind(src, dst):
        if os.path.isdir(src):
            os.makedirs(dst, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            open(dst, "a").close()
        mount(src, dst, "", BIND | REC)
        mount("none", dst, "", REMOUNT | BIND | RDONLY | NOSUID | NODEV)

    root = jail["root"]
    mount("tmpfs", root, "tmpfs", NOSUID | NODEV, "size=1m,mode=755")
    os.makedirs(root + "/dev/shm")
    tmpfs(root + "/dev/shm", "1777")
    os.makedirs(root + cfg["tmp"])
    tmpfs(root + cfg["tmp"], "700")
    os.chown(root + cfg["tmp"], jail["uid"], jail["uid"])
    for name in jail["devices"]:
        open(root + "/dev/" + name, "a").close()
        mount("/dev/" + name, root + "/dev/" + name, "", BIND)
    for kind, src, dst in jail["view"]:
        if kind == "symlink":
            os.symlink(src, root + dst)
        else:
            ro_bind(src, root + dst)
    os.makedirs(root + "/proc")
    mount("proc", root + "/proc", "proc", NOSUID | NODEV | NOEXEC)
    mount("none", root, "", REMOUNT | RDONLY | NOSUID | NODEV)
    os.chroot(root)
    os.setgroups([])
    os.setgid(jail["uid"])
    os.setuid(jail["uid"])
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "sandbox: cannot set no_new_privs")
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
    except (TypeError, ValueError):
        text = json.dumps({"unserializable": True})
    os.write(out, text.encode())
"""


from ray_distill.errors import SandboxUnavailable  # noqa: E402  (the error families live in one leaf module)


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0  # wall clock per test
    memory_mb: int = 1024  # address space
    max_processes: int = 16  # tasks (processes and threads) inside the sandbox
    max_output_bytes: int = 1 << 20  # stdout, stderr and any file the program writes
    max_open_files: int = 64
    max_tmp_bytes: int = 16 << 20  # each of the private /tmp and /dev/shm (tmpfs size)

    @property
    def cpu_s(self) -> int:
        """CPU-second cap: the wall clock normally fires first."""
        return math.ceil(self.timeout_s) + 1


@dataclass(frozen=True)
class TestResult:
    passed: bool
    reason: str  # "" when passed, else one of the reason constants above
    detail: str  # reason-shaped context (built-in exception name, expected vs the shape of what came back)
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


def bwrap_version(bwrap: str = "bwrap") -> tuple[int, ...] | None:
    """bubblewrap's version as a tuple (``bwrap --version``: "bubblewrap 0.8.0"), None when it does not say."""
    try:
        out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    return tuple(int(x or 0) for x in found.groups()) if found else None


def _version_text(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def _check_backend(backend: str) -> str | None:
    """Why ``backend`` cannot be used here before even trying it (one clause), else None."""
    if shutil.which(backend) is None:
        return f"{backend}: not installed"
    if backend == "bwrap":
        version = bwrap_version(shutil.which("bwrap"))
        if version is None or version < BWRAP_MIN_VERSION:
            have = f"bubblewrap {_version_text(version)}" if version else "a bubblewrap that does not say its version"
            return f"bwrap: {have} is too old, the sandbox needs >= {_version_text(BWRAP_MIN_VERSION)}"
    if backend == "unshare" and os.geteuid() != 0:
        return (f"unshare: refused for a non-root caller (uid {os.geteuid()}): without root it cannot hide the host's "
                f"files and Unix sockets from the program")
    return None


@functools.lru_cache(maxsize=None)
def detect_backend(prefer: str = "auto", python: str | None = None) -> str:
    """The backend that runs a trivial program here, or :class:`SandboxUnavailable` (one line: what failed and
    how to fix it). ``prefer`` names one backend to use; ``"auto"`` means bwrap and never downgrades to
    ``unshare``: that takes an explicit ``backend: unshare`` (and a root caller)."""
    if prefer not in ("auto", *BACKENDS):
        raise ValueError(f"unknown sandbox backend {prefer!r}; expected auto or one of {BACKENDS}")
    backend = "bwrap" if prefer == "auto" else prefer
    error = _check_backend(backend)
    if error is None:
        probe_box = Sandbox(Limits(timeout_s=10), backend=backend, python=python)
        probe_box._resolved = backend  # probe this backend without detecting again
        probe = probe_box._execute("print(6 * 7)", "stdio", "", None)
        if probe.returncode == 0 and probe.stdout.strip() == "42":
            if backend == "unshare":
                logger.warning("sandbox: using 'unshare' as configured (root caller: chroot into a read-only view, "
                               "uid %d); bwrap is the default", SANDBOX_UID)
            return backend
        error = f"{backend}: {_last_line(probe.stderr) or f'exit code {probe.returncode}'}"
    fix = (f"install bubblewrap >= {_version_text(BWRAP_MIN_VERSION)} ({BWRAP_HOWTO}) with unprivileged user "
           f"namespaces enabled")
    if prefer == "auto":
        raise SandboxUnavailable(f"no working code sandbox ({error}): backend 'auto' needs bwrap; {fix}")
    raise SandboxUnavailable(f"no working code sandbox ({error}); {fix}")


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


_PREFIXES = "import json, sys; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]))"


@functools.lru_cache(maxsize=None)
def interpreter_dirs(python: str) -> tuple[str, ...]:
    """The directories ``python`` runs from, outside the system directories: its prefixes (a venv and the
    Python it was made from) and the directory of each link on the way to the executable."""
    try:
        proc = subprocess.run([python, "-I", "-c", _PREFIXES], capture_output=True, text=True, timeout=60,
                              env={"PATH": _CLEAN_PATH}, cwd="/")
        prefixes = json.loads(proc.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as err:
        raise SandboxUnavailable(f"cannot run the sandbox's python {python!r}: {err}") from None
    dirs, path = list(prefixes), os.path.abspath(python)
    for _ in range(40):  # the chain of symlinks to the interpreter (a venv's bin/python -> the base Python)
        dirs.append(os.path.dirname(path))
        if not os.path.islink(path):
            break
        path = os.path.join(os.path.dirname(path), os.readlink(path))
    return _outermost(d for d in (os.path.normpath(d) for d in dirs) if d != "/" and not _under_system(d))


def _under_system(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in _SYSTEM_DIRS)


def _outermost(paths) -> tuple[str, ...]:
    """Sorted, without duplicates and without paths inside another one of them."""
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not any(path.startswith(k + "/") for k in kept):
            kept.append(path)
    return tuple(kept)


def sandbox_view(python: str) -> list[tuple[str, str, str]]:
    """What the program's root file system holds besides /tmp, /dev and /proc: ``(kind, source, destination)``
    with kind ``ro-bind`` or ``symlink`` (a merged-/usr link such as ``/lib -> usr/lib``)."""
    view = []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            view.append(("symlink", os.readlink(path), path))
        elif os.path.isdir(path):
            view.append(("ro-bind", path, path))
    view += [("ro-bind", path, path) for path in _ETC_FILES if os.path.exists(path)]
    view += [("ro-bind", path, path) for path in interpreter_dirs(python)]
    return view


SLOT_POLL_S = 0.02  # node_slot: how often a waiting run tries the slots again


def slot_dir() -> str:
    """Where the node's sandbox slots live: one lock file per slot, shared by every process of this user on the
    node (Ray workers inherit the node's temporary directory)."""
    return os.path.join(tempfile.gettempdir(), f"ray-distill-sandbox-slots-{os.getuid()}")


@contextlib.contextmanager
def node_slot(slots: int, folder: str | None = None):
    """Hold one of ``slots`` node-wide slots (an exclusive ``flock`` on one of ``slots`` files) while the block
    runs, waiting for a free one: every grader actor and thread of the node shares the same ``slots``. A lock
    dies with its process, so a killed grader never keeps a slot."""
    folder = folder or slot_dir()
    os.makedirs(folder, exist_ok=True)
    start = random.randrange(slots)  # spread the first tries over the slots
    while True:
        for i in range(slots):
            fd = os.open(os.path.join(folder, f"slot-{(start + i) % slots}"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield
            finally:
                os.close(fd)  # releases the lock
            return
        time.sleep(SLOT_POLL_S)


class Sandbox:
    """Runs programs against tests; ``backend`` is ``"auto"``, ``"bwrap"`` or ``"unshare"``. At most
    ``node_concurrency`` programs run at once on the node (default: its cores), across every process and thread
    that grades there (:func:`node_slot`), so a test's wall clock measures the program, not a queue of others."""

    def __init__(self, limits: Limits = Limits(), backend: str = "auto", python: str | None = None,
                 node_concurrency: int | None = None):
        self.limits = limits
        self.python = python or default_python()
        self.backend = backend
        self.node_concurrency = node_concurrency or len(os.sched_getaffinity(0))
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
            failure = (WRONG_OUTPUT, _output_difference(run.stdout, expected))
        return _result(failure, start)

    def run_call_case(self, program: str, fn_name: str, args: list, expected) -> TestResult:
        start = time.perf_counter()
        run = self._execute(program, "call", "", {"fn_name": fn_name, "args": args})
        failure = _failure(run, self.limits)
        if failure is None:
            failure = _compare_call(run.result, expected)
        return _result(failure, start)

    def _execute(self, program: str, mode: str, stdin: str, call: dict | None) -> _Run:
        backend = self.resolve()
        with node_slot(self.node_concurrency):
            return self._execute_backend(backend, program, mode, stdin, call)

    def _execute_backend(self, backend: str, program: str, mode: str, stdin: str, call: dict | None) -> _Run:
        if backend == "bwrap":
            return self._execute_in(None, program, mode, stdin, call)
        root = tempfile.mkdtemp(prefix="ray-distill-sandbox-")  # the chroot's mount point (private mount namespace)
        try:
            return self._execute_in(root, program, mode, stdin, call)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def _execute_in(self, jail_root: str | None, program: str, mode: str, stdin: str, call: dict | None) -> _Run:
        """Run once; the inputs reach the launcher as inherited descriptors (no file of the host is shared)."""
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
        # bwrap: a root caller starts it as the sandbox uid with no groups; unshare: the launcher drops after the chroot
        drop = os.geteuid() == 0 and jail_root is None
        ids = {"user": SANDBOX_UID, "group": SANDBOX_UID, "extra_groups": []} if drop else {}
        inputs = {_PROGRAM: program} if call is None else {_PROGRAM: program, _CALL: json.dumps(call)}
        with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr, \
                tempfile.TemporaryFile() as fres, _input_files(inputs) as input_fds:
            fin.write(stdin.encode("utf-8"))
            fin.seek(0)
            jail = None
            if jail_root is not None:
                jail = {"root": jail_root, "view": sandbox_view(self.python), "devices": _DEVICES, "uid": SANDBOX_UID}
            cfg = {"mode": mode, "rlimits": rlimits, "inputs": input_fds, "tmp": _PRIVATE_TMP,
                   "tmp_bytes": lim.max_tmp_bytes, "jail": jail, "result_fd": fres.fileno()}
            inner = [self.python, "-I", "-c", _LAUNCHER, json.dumps(cfg)]
            proc = subprocess.Popen(self._wrap(inner), cwd="/", env=env, stdin=fin, stdout=fout, stderr=ferr,
                                    start_new_session=True, close_fds=True,
                                    pass_fds=(fres.fileno(), *input_fds.values()), **ids)
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

    def _wrap(self, inner: list[str]) -> list[str]:
        """The command line; the tool is the one on the caller's PATH whose version was checked."""
        tool = shutil.which(self.resolve()) or self.resolve()
        if self.resolve() == "bwrap":
            return bwrap_command(inner, sandbox_view(self.python), self.limits.max_tmp_bytes, tool)
        return [tool, "--mount", "--propagation", "private", "--net", "--pid", "--ipc", "--uts", "--fork",
                "--kill-child", "--", *inner]


def bwrap_command(inner: list[str], view: list[tuple[str, str, str]], tmp_bytes: int,
                  bwrap: str = "bwrap") -> list[str]:
    """The bwrap command line that runs ``inner`` with only ``view`` (see :func:`sandbox_view`) visible."""
    cmd = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
           "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
           "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/dev/shm",
           "--remount-ro", "/dev", "--perms", "0700", "--size", str(tmp_bytes), "--tmpfs", _PRIVATE_TMP]
    for kind, src, dst in view:
        cmd += ["--symlink", src, dst] if kind == "symlink" else ["--ro-bind", src, dst]
    return cmd + ["--remount-ro", "/", "--chdir", "/", "--", *inner]


class _input_files:
    """Unlinked temporary files holding ``{name: text}``, open for the child to inherit: ``{name: fd}``."""

    def __init__(self, inputs: dict[str, str]):
        self.inputs = inputs
        self.files = []

    def __enter__(self) -> dict[str, int]:
        fds = {}
        for name, text in self.inputs.items():
            f = tempfile.TemporaryFile()
            self.files.append(f)
            f.write(text.encode("utf-8"))
            f.seek(0)
            fds[name] = f.fileno()
        return fds

    def __exit__(self, *exc) -> None:
        for f in self.files:
            f.close()


def _failure(run: _Run, lim: Limits) -> tuple[str, str] | None:
    """(reason, detail) when the run did not finish cleanly, else None."""
    if run.timed_out:
        return TIMEOUT, f"wall clock over {lim.timeout_s:g} s"
    if run.output_bytes >= lim.max_output_bytes:
        return OUTPUT_LIMIT, f"output reached {lim.max_output_bytes} bytes"
    if not run.started:  # the program never ran: the sandbox's own message (bwrap, the launcher)
        return SANDBOX_ERROR, _last_line(run.stderr) or f"sandbox exit code {run.returncode}"
    signum = _signal_of(run.returncode)
    if signum == signal.SIGXCPU:
        return TIMEOUT, f"CPU time over {lim.cpu_s} s"
    if signum == signal.SIGKILL:
        return KILLED, "killed by SIGKILL (out of memory, or a signal from outside)"
    summary = error_summary(run.stderr)
    if summary.startswith("MemoryError"):
        return MEMORY_LIMIT, f"address space over {lim.memory_mb} MB"
    if run.returncode != 0:
        if signum is not None:
            return RUNTIME_ERROR, f"killed by {signal.Signals(signum).name}"
        return RUNTIME_ERROR, summary or f"exit code {run.returncode}"
    return None


def _signal_of(returncode: int) -> int | None:
    """The signal that ended the run: ``-N`` (the launcher itself) or ``128 + N`` (bwrap/unshare pass it on)."""
    signum = -returncode if returncode < 0 else returncode - 128 if 128 < returncode < 128 + 65 else None
    return signum if signum in signal.valid_signals() else None


def _compare_call(result: str | None, expected) -> tuple[str, str] | None:
    if result is None:
        return RUNTIME_ERROR, "the harness wrote no result"
    try:
        payload = json.loads(result)
    except json.JSONDecodeError:
        return RUNTIME_ERROR, "the harness result is not valid JSON"
    if not isinstance(payload, dict) or "value" not in payload:
        return WRONG_OUTPUT, "return value is not JSON-serialisable"
    if not values_match(payload["value"], expected):
        return WRONG_OUTPUT, f"expected {_short(json.dumps(expected))}, got {_shape(payload['value'])}"
    return None


def _output_difference(got: str, expected: str) -> str:
    """What differs, in the shape of the program's output only (never its text)."""
    got_tokens, want = got.split(), expected.split()
    first = next((i for i, (a, b) in enumerate(zip(got_tokens, want)) if a != b), min(len(got_tokens), len(want)))
    return (f"expected {_short(expected)!r} ({len(want)} tokens), got {len(got_tokens)} tokens, "
            f"first difference at token {first + 1}")


def _shape(value) -> str:
    """The JSON type (and length) of a value the program returned, never the value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return f"an object of {len(value)} keys"
    return "another JSON value"


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


def _read(f, limit: int = -1) -> bytes:
    f.seek(0)
    return f.read(limit)


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::\s*(.*))?$")
_ERRNO = re.compile(r"^\[Errno (\d+)\]")


def error_summary(stderr: str) -> str:
    """What a failing program's stderr is reduced to before it is stored: the last line that names one of
    Python's built-in exceptions, as that name, plus ``[Errno N]`` and the system's own text for N when it
    is an ``OSError`` ("ConnectionRefusedError: [Errno 111] Connection refused"); "" when no line does.

    Nothing the program wrote is kept beyond that choice of a built-in name and an errno: its messages,
    its own exception classes and its other lines are dropped. (A forking program writes several
    tracebacks into one stderr file, and one killed when the sandbox ends can leave a frame line last:
    the error is the last line that names an exception.)"""
    other = False
    for line in reversed([line.strip() for line in stderr.splitlines() if line.strip()]):
        match = _EXCEPTION_LINE.match(line)
        if not match:
            continue
        name, message = match.group(1), match.group(2) or ""
        cls = getattr(builtins, name, None)
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            other = other or re.search(r"(Error|Exception)$", name) is not None
            continue
        errno = _ERRNO.match(message)
        if issubclass(cls, OSError) and errno:
            return f"{name}: [Errno {errno.group(1)}] {os.strerror(int(errno.group(1)))}"
        return name
    return "an exception that is not built into Python" if other else ""


def _last_line(text: str) -> str:
    """The last non-blank line of text the sandbox itself wrote (bwrap's or the launcher's message)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:_DETAIL_CHARS] if lines else ""


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "..."
