"""The code sandbox on real namespaces (bwrap, and unshare when configured for a root caller): hostile programs
end as failed tests with the right reason, see nothing of the host, and the caller goes on."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ray_distill.curation import sandbox as S

ROOT = Path(__file__).resolve().parents[2]

# Generous wall clock: on a loaded machine, starting Python inside the sandbox can take over a second.
FAST = S.Limits(timeout_s=5.0, memory_mb=256, max_processes=8, max_output_bytes=64 * 1024)


@functools.lru_cache(maxsize=None)
def _box(backend: str, python: str | None = None, limits: S.Limits = FAST) -> S.Sandbox:
    if shutil.which(backend) is None:
        pytest.skip(f"{backend} is not installed")
    if backend == "unshare" and os.geteuid() != 0:
        pytest.skip("the unshare backend is refused for a non-root caller (checked in the non-root test)")
    box = S.Sandbox(limits, backend=backend, python=python)
    box.resolve()
    return box


@pytest.fixture(params=S.BACKENDS)
def box(request) -> S.Sandbox:
    return _box(request.param)


def _stdio(box: S.Sandbox, program: str, stdin: str = "", expected: str = "ok") -> S.TestResult:
    return box.run_stdio_case(program, stdin, expected)


def test_output_and_value_comparison():
    assert S.outputs_match("3  4\n5\n\n", "3 4 5")
    assert not S.outputs_match("3 4", "3 45")
    assert S.values_match((1, 2), [1, 2]) and S.values_match({"a": (1,)}, {"a": [1]})
    assert S.values_match(7, [7])  # APPS/TACO wrap call outputs in a list
    assert not S.values_match([1, 2], [[1], [2]])


def test_detail_is_the_last_exception_line_of_interleaved_tracebacks():
    # a forking program's children write their tracebacks into the same stderr; one killed mid-write
    # leaves a frame line last (seen in CI on the fork bomb)
    stderr = ("Traceback (most recent call last):\n  File \"solution.py\", line 3, in <module>\n"
              "BlockingIOError: [Errno 11] Resource temporarily unavailable\n"
              "Traceback (most recent call last):\n  File \"solution.py\", line 3, in <module>\n")
    assert S.error_summary(stderr) == "BlockingIOError: [Errno 11] Resource temporarily unavailable"
    assert S.error_summary("") == ""


def test_stored_detail_keeps_nothing_the_program_wrote():
    """stderr becomes a built-in exception name (plus an OSError's errno, in the system's words): what the
    program printed, its messages and its own exception classes are dropped."""
    leak = "AKIAEXAMPLESECRET"
    assert S.error_summary(f"no exception here\n{leak}\n") == ""
    assert S.error_summary(f"ValueError: {leak}\n") == "ValueError"
    assert S.error_summary(f"FileNotFoundError: [Errno 2] {leak}\n") == \
        "FileNotFoundError: [Errno 2] No such file or directory"
    assert S.error_summary(f"{leak}Error: x\n") == "an exception that is not built into Python"
    assert S.error_summary(f"KeyError: 'a'\n{leak}Error: x\n") == "KeyError"
    assert leak not in S._output_difference(f"1 {leak}", "1 2") and "first difference at token 2" in \
        S._output_difference(f"1 {leak}", "1 2")
    assert S._compare_call(json.dumps({"value": leak}), "x")[1] == 'expected "x", got a string of 17 characters'


def test_sigkill_is_reported_as_killed_not_cpu_time():
    """SIGKILL (the OOM killer, or the CPU hard limit) is "killed"; SIGXCPU is the CPU time limit; bwrap and
    unshare pass a signal on as 128 + N."""
    def run(code: int) -> S._Run:
        return S._Run(returncode=code, timed_out=False, started=True, stdout="", stderr="", output_bytes=0, result=None)

    for code in (-signal.SIGKILL, 128 + signal.SIGKILL):
        assert S._failure(run(code), FAST)[0] == S.KILLED
    for code in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        assert S._failure(run(code), FAST) == (S.TIMEOUT, f"CPU time over {FAST.cpu_s} s")
    if shutil.which("bwrap"):  # a real SIGKILL (under unshare the launcher is pid 1, which ignores its own)
        result = _stdio(_box("bwrap"), "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
        assert (result.reason, "SIGKILL" in result.detail) == (S.KILLED, True), result


def test_correct_and_wrong_stdio_programs(box):
    tests = {"type": "stdio", "cases": [{"input": "1 2\n", "output": "3\n"}, {"input": "2 2\n", "output": "5"}]}
    results = box.run_tests("a, b = map(int, input().split())\nprint(a + b)\n", tests, stop_on_failure=False)
    assert [r.passed for r in results] == [True, False]
    assert results[1].reason == S.WRONG_OUTPUT
    assert results[1].detail == "expected '5' (1 tokens), got 1 tokens, first difference at token 1"


def test_correct_and_wrong_call_programs(box):
    tests = {"type": "call", "fn_name": "pair",
             "cases": [{"args": [1, 2], "expected": [1, 2]}, {"args": [3, 4], "expected": [[3, 4]]},
                       {"args": [5, 6], "expected": [6, 5]}]}
    results = box.run_tests("def pair(a, b):\n    return (a, b)\n", tests, stop_on_failure=False)
    assert [r.reason for r in results] == ["", "", S.WRONG_OUTPUT]
    leetcode = {"type": "call", "fn_name": "add", "cases": [{"args": [2, 3], "expected": 5}]}
    assert box.run_tests("class Solution:\n    def add(self, a, b):\n        return a + b\n", leetcode)[0].passed
    missing = box.run_tests("def other():\n    pass\n", leetcode)[0]
    assert (missing.reason, "NameError" in missing.detail) == (S.RUNTIME_ERROR, True)
    odd = box.run_call_case("def f():\n    return {1, 2}\n", "f", [], [1, 2])
    assert odd.reason == S.WRONG_OUTPUT and "not JSON" in odd.detail


def test_stop_on_first_failure(box):
    tests = {"type": "stdio", "cases": [{"input": "", "output": "x"}] * 3}
    assert len(box.run_tests("print('y')", tests)) == 1


def test_infinite_loop_and_sleep_time_out(box):
    quick = S.Sandbox(S.Limits(timeout_s=1.0, memory_mb=256, max_processes=8), backend=box.resolve())
    assert _stdio(quick, "while True:\n    pass\n").reason == S.TIMEOUT
    slept = _stdio(quick, "import time\ntime.sleep(60)\n")
    assert slept.reason == S.TIMEOUT and slept.seconds < 5


def _hold_slot(folder: str, slots: int, hold_s: float, log: str) -> None:
    import time

    with S.node_slot(slots, folder):
        start = time.time()
        time.sleep(hold_s)
        end = time.time()
    with open(log, "a") as f:
        f.write(f"{start} {end}\n")


def test_node_slots_cap_the_programs_of_every_process_on_the_node(tmp_path):
    """Four processes, two slots: never more than two hold one at once; a holder killed with SIGKILL frees
    its slot at once (the lock dies with the process)."""
    import multiprocessing
    import time

    ctx = multiprocessing.get_context("fork")
    log = str(tmp_path / "held.txt")
    procs = [ctx.Process(target=_hold_slot, args=(str(tmp_path / "slots"), 2, 1.0, log)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    spans = [tuple(map(float, line.split())) for line in open(log)]
    assert len(spans) == 4
    most = max(sum(a <= t < b for a, b in spans) for t, _ in spans)  # holders at each start
    assert most == 2, spans

    stuck = ctx.Process(target=_hold_slot, args=(str(tmp_path / "one"), 1, 600.0, log))
    stuck.start()
    deadline = time.monotonic() + 30
    while not os.path.exists(tmp_path / "one" / "slot-0") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(stuck.pid, signal.SIGKILL)
    stuck.join()
    start = time.monotonic()
    with S.node_slot(1, str(tmp_path / "one")):
        assert time.monotonic() - start < 5


def test_a_program_waits_for_a_node_slot_outside_its_wall_clock(box):
    """With the node's only slot held elsewhere for 1.5 s, a program under a 1 s wall clock waits, then runs and
    passes: the timeout measures the program, not the queue."""
    import threading
    import time

    one = S.Sandbox(S.Limits(timeout_s=1.0, memory_mb=256, max_processes=8), backend=box.resolve(), node_concurrency=1)
    held = threading.Event()

    def hold():
        with S.node_slot(1):
            held.set()
            time.sleep(1.5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(30)
    result = _stdio(one, "print('ok')")
    holder.join()
    assert result.passed and result.seconds >= 1.0, result


def test_fork_bomb_is_contained(box):
    before = _tasks_of(S.SANDBOX_UID)
    result = _stdio(box, "import os\nwhile True:\n    os.fork()\n")
    assert result.reason in (S.RUNTIME_ERROR, S.TIMEOUT) and not result.passed
    if result.reason == S.RUNTIME_ERROR:
        assert "Resource temporarily unavailable" in result.detail
    assert _tasks_of(S.SANDBOX_UID) <= before  # nothing outlives the sandbox
    assert _stdio(box, "print('ok')").passed  # and the next program runs normally


def test_memory_bomb(box):
    assert _stdio(box, "x = bytearray(10 ** 10)\n").reason == S.MEMORY_LIMIT
    growing = S.Sandbox(S.Limits(timeout_s=10, memory_mb=128), backend=box.resolve())  # slow machines: no timeout
    assert _stdio(growing, "a = []\nwhile True:\n    a.append(' ' * 10 ** 6)\n").reason == S.MEMORY_LIMIT


def test_output_flood(box):
    assert _stdio(box, "while True:\n    print('x' * 1000)\n").reason == S.OUTPUT_LIMIT


def test_no_network(box):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    program = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\nprint('ok')\n"
    try:
        result = _stdio(box, program)
        assert result.reason == S.RUNTIME_ERROR
        assert any(m in result.detail for m in ("refused", "unreachable")), result.detail
        with pytest.raises(socket.timeout):
            listener.accept()  # the listener received nothing
    finally:
        listener.close()


def test_writes_outside_the_work_dir_fail(box, tmp_path):
    target = tmp_path / "escape.txt"
    program = f"open({str(target)!r}, 'w').write('x')\nprint('ok')\n"
    assert _stdio(box, program).reason == S.RUNTIME_ERROR
    assert not target.exists()
    for probe in (f"/var/tmp/ray-distill-escape-{os.getpid()}", "/escape.txt", "/dev/escape"):  # not there / read-only
        detail = _stdio(box, f"open({probe!r}, 'w').write('x')").detail
        assert "No such file or directory" in detail or "Read-only file system" in detail, (probe, detail)
        assert not os.path.exists(probe)
    inside = _stdio(box, "open('scratch.txt', 'w').write('x')\nprint(open('scratch.txt').read())\n", expected="x")
    assert inside.passed  # the work dir itself is writable


def test_clean_environment(box, monkeypatch):
    monkeypatch.setenv("RAY_DISTILL_SECRET_FOR_TEST", "s3cret")
    result = _stdio(box, "import os\nprint(os.environ.get('RAY_DISTILL_SECRET_FOR_TEST', 'clean'))\n", expected="clean")
    assert result.passed


def test_no_sandbox_raises_instead_of_running(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither bwrap nor unshare can be found
    with pytest.raises(S.SandboxUnavailable, match="bwrap: not installed"):
        S.detect_backend.__wrapped__("auto")
    with pytest.raises(S.SandboxUnavailable, match="unshare: not installed"):
        S.detect_backend.__wrapped__("unshare")


def test_auto_never_downgrades_to_unshare(monkeypatch, tmp_path):
    """With only unshare on the PATH, auto refuses loudly and names the explicit setting; unshare as configured runs."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    os.symlink(shutil.which("unshare"), tmp_path / "unshare")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(S.SandboxUnavailable, match=r"backend 'auto' needs bwrap; install bubblewrap >= 0\.8\.0"):
        S.detect_backend.__wrapped__("auto")
    if os.geteuid() == 0:
        assert S.detect_backend.__wrapped__("unshare") == "unshare"


def test_auto_names_the_bubblewrap_version_it_needs(monkeypatch, tmp_path):
    """A bwrap older than 0.8.0 (Ubuntu 22.04 ships 0.6.1) is refused in one line naming both versions and the fix."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bubblewrap 0.6.1'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(S.SandboxUnavailable) as err:
        S.detect_backend.__wrapped__("auto")
    message = str(err.value)
    assert "\n" not in message
    assert "bubblewrap 0.6.1 is too old, the sandbox needs >= 0.8.0" in message
    assert "scripts/install_bwrap.sh" in message


SECRET_ENV = "RAY_DISTILL_VICTIM_SECRET"
# Looks for the secret in every process's environment and command line it can see.
SNOOP = f"""import os
found = []
for pid in filter(str.isdigit, os.listdir('/proc')):
    for what in ('environ', 'cmdline'):
        try:
            with open(f'/proc/{{pid}}/{{what}}', 'rb') as f:
                if b'{SECRET_ENV}' in f.read():
                    found.append(pid + '/' + what)
        except OSError:
            pass
print('found ' + ' '.join(found) if found else 'ok')
"""


def test_program_cannot_read_other_processes_environments(box):
    """A process of the very uid the program runs as holds a secret in its environment and command line: the
    program's /proc shows only the sandbox's own processes (bwrap --proc, unshare --mount-proc)."""
    uid = S.SANDBOX_UID if os.geteuid() == 0 else os.geteuid()
    ids = {"user": uid, "group": uid, "extra_groups": []} if os.geteuid() == 0 else {}
    victim = subprocess.Popen(["sh", "-c", "sleep 60; :", SECRET_ENV], env={SECRET_ENV: "s3cret", "PATH": "/usr/bin:/bin"}, **ids)
    try:
        result = _stdio(box, SNOOP)
        assert result.passed, result
        assert victim.poll() is None, "the victim was not running"
    finally:
        victim.kill()
        victim.wait()


# Fills the private tmp: files of just under RLIMIT_FSIZE each until the file system refuses.
FILL = """import errno, os
total, files = 0, 0
try:
    while files < 100000:
        with open('f%d' % files, 'wb') as f:
            files += 1
            for _ in range(15):
                f.write(b'x' * 4096)
                f.flush()
                total += 4096
except OSError as err:
    print('full' if err.errno in (errno.ENOSPC, errno.EDQUOT) else 'error %s' % err, total, files)
"""


def test_private_tmp_is_capped(box):
    """Whatever the program writes (files of any size, in its working directory = /tmp) stops at max_tmp_bytes."""
    cap = 1 << 20
    small = S.Sandbox(FAST.__class__(**{**FAST.__dict__, "max_tmp_bytes": cap}), backend=box.resolve())
    run = small._execute(FILL, "stdio", "", None)
    word, total, files = run.stdout.split()
    assert word == "full" and int(total) <= cap and int(files) <= cap // 4096 + 1, run.stdout
    assert box.run_stdio_case("open('a', 'w').write('x' * 1000)\nprint(open('a').read()[:2])", "", "xx").passed


def _tasks_of(uid: int) -> int:
    """Live (non-zombie) processes of ``uid``."""
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            n += os.stat(f"/proc/{pid}").st_uid == uid and state not in (b"Z", b"X")
        except (OSError, IndexError):
            pass
    return n


# What the test host offers a program that escapes (files, a Unix socket, a venv of the sandbox's uid) and what
# the program tries: all outside /tmp, where today's backends (bwrap read-only root, unshare) showed them.
HOST_SECRET = "ray-distill host secret"
SHARED_GROUP = 4242  # a supplementary group of the non-root caller, owning a file only that group may read
ATTACK_LIMITS = S.Limits(timeout_s=5.0, memory_mb=256, max_processes=8, max_output_bytes=64 * 1024,
                         max_tmp_bytes=1 << 20)
# Reads the host's paths from stdin; prints what it reached as JSON (never more than ~4 x max_tmp_bytes written).
ATTACK = """import json, os, socket, sys
paths = json.loads(sys.stdin.read())
got = {"uid": os.getuid(), "groups": os.getgroups(), "root": sorted(os.listdir("/")), "prefix": sys.prefix,
       "beside_prefix": sorted(os.listdir(os.path.dirname(sys.prefix)))}
client = socket.socket(socket.AF_UNIX)
client.settimeout(2)
try:
    client.connect(paths["socket"])
    client.sendall(b"x")
    got["socket"] = "connected"
except OSError as err:
    got["socket"] = err.strerror
for key in ("file", "group_file"):
    try:
        with open(paths[key]) as f:
            got[key] = f.read()
    except OSError as err:
        got[key] = err.strerror
got["shm"] = 0
try:
    while got["shm"] < 4 * paths["cap"]:
        with open("/dev/shm/%s%d" % (paths["shm_prefix"], got["shm"]), "wb") as f:
            f.write(b"x" * 49152)
        got["shm"] += 49152
except OSError as err:
    got["shm_error"] = err.strerror
try:
    with open(os.path.join(sys.prefix, "lib", paths["pth"]), "w") as f:
        f.write("import os")
    got["venv"] = "wrote"
except OSError as err:
    got["venv"] = err.strerror
print(json.dumps(got))
"""


class _Host:
    """Bait outside /tmp (under /var/tmp): a world-readable file, a file only ``group`` reads, a listening Unix
    socket anyone may connect to, and a venv (of the system python3) owned by ``owner`` -- the uid the sandbox
    runs as on the host, so only the sandbox keeps the program from writing into it."""

    def __init__(self, owner: int, group: int | None = None):
        if not os.path.isdir("/var/tmp"):
            pytest.skip("no /var/tmp on this machine")
        python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
        if python is None:
            pytest.skip("no system python3 to make a venv from")
        self.base = Path(tempfile.mkdtemp(prefix="ray-distill-host-", dir="/var/tmp"))
        self.base.chmod(0o755)
        tag = self.base.name
        (self.base / "secret.txt").write_text(HOST_SECRET)
        (self.base / "secret.txt").chmod(0o644)
        (self.base / "group-secret.txt").write_text(HOST_SECRET)
        (self.base / "group-secret.txt").chmod(0o640 if group is not None else 0o600)
        if group is not None:
            os.chown(self.base / "group-secret.txt", 0, group)
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(self.base / "agent.sock"))
        self.listener.listen(4)
        self.listener.setblocking(False)
        (self.base / "agent.sock").chmod(0o777)
        subprocess.run([python, "-m", "venv", "--without-pip", str(self.base / "venv")], check=True, timeout=60)
        if owner != os.geteuid():
            for path in [self.base / "venv", *(self.base / "venv").rglob("*")]:
                os.lchown(path, owner, owner)
        self.python = str(self.base / "venv" / "bin" / "python")
        self.paths = {"socket": str(self.base / "agent.sock"), "file": str(self.base / "secret.txt"),
                      "group_file": str(self.base / "group-secret.txt"), "cap": ATTACK_LIMITS.max_tmp_bytes,
                      "shm_prefix": tag + "-", "pth": f"{tag}.pth"}

    def close(self) -> None:
        self.listener.close()
        shutil.rmtree(self.base, ignore_errors=True)
        if os.path.isdir("/dev/shm"):  # today's unshare wrote into the host's /dev/shm
            for name in os.listdir("/dev/shm"):
                if name.startswith(self.paths["shm_prefix"]):
                    os.remove(os.path.join("/dev/shm", name))

    def accepted(self) -> bool:
        try:
            self.listener.accept()[0].close()
            return True
        except BlockingIOError:
            return False

    def planted(self) -> list[str]:
        """Files the program left in the venv or the host's /dev/shm."""
        venv = [str(p) for p in (self.base / "venv").rglob(self.paths["pth"])]
        shm = os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else []
        shm = [n for n in shm if n.startswith(self.paths["shm_prefix"])]
        return venv + shm


def _contained(got: dict, host: _Host) -> list[str]:
    """What of the host the program reached (empty: nothing)."""
    leaks = []
    if got["socket"] == "connected" or host.accepted():
        leaks.append("connected to a Unix socket outside /tmp")
    leaks += [f"read {key}" for key in ("file", "group_file") if got[key] == HOST_SECRET]
    if got["shm"] > host.paths["cap"]:
        leaks.append(f"wrote {got['shm']} bytes to /dev/shm (cap {host.paths['cap']})")
    if got["venv"] == "wrote" or host.planted():
        leaks.append(f"wrote into the venv or the host: {host.planted()}")
    on_the_way = got["prefix"].split("/")[1]  # the venv's own path (here under /var/tmp) is there, read-only
    hidden = {"home", "root", "run", "var", "srv", "mnt"} - {on_the_way}
    if hidden & set(got["root"]) or got["beside_prefix"] != ["venv"]:
        leaks.append(f"sees host directories: / has {got['root']}, beside the venv {got['beside_prefix']}")
    if got["uid"] != S.SANDBOX_UID or not set(got["groups"]) <= {S.SANDBOX_UID}:
        leaks.append(f"runs as uid {got['uid']} with groups {got['groups']}")
    return leaks


@pytest.fixture(scope="module")
def host():
    bait = _Host(owner=S.SANDBOX_UID if os.geteuid() == 0 else os.geteuid())
    yield bait
    bait.close()


def test_program_sees_nothing_of_the_host(box, host):
    """As the caller the tests run as (root: the sandbox drops to uid 65534): a Unix socket file, a world-readable
    file and a venv of the sandbox's own uid, all outside /tmp, are out of reach; /dev/shm is capped; the root
    holds no /home, /root, /run, /var; uid 65534 without supplementary groups."""
    sandbox = _box(box.resolve(), host.python, ATTACK_LIMITS)
    run = sandbox._execute(ATTACK, "stdio", json.dumps(host.paths), None)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    got = json.loads(run.stdout)
    assert got["prefix"] == str(host.base / "venv")  # the venv's python ran, its prefix read-only
    assert _contained(got, host) == [], got


NON_ROOT_UID = 1000  # the KubeRay image's `ray` user
# Run as a non-root uid: the sandbox as a Ray worker of the KubeRay image would use it (no uid drop).
AS_WORKER = """import json, os, shutil, signal, subprocess, sys
from ray_distill.curation import sandbox as S
from tests.curation.test_sandbox import ATTACK, ATTACK_LIMITS, FILL, SECRET_ENV, SNOOP
assert os.geteuid() != 0
host = json.loads(sys.argv[1])
victim = subprocess.Popen(["sh", "-c", "sleep 60; :", SECRET_ENV], env={SECRET_ENV: "s3cret", "PATH": "/usr/bin:/bin"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
out = {"uid": os.geteuid(), "groups": os.getgroups()}
try:
    for backend in sys.argv[2:]:
        box = S.Sandbox(ATTACK_LIMITS, backend=backend, python=host["python"])
        try:
            box.resolve()
        except S.SandboxUnavailable as err:
            out[backend] = {"refused": str(err)}
            continue
        escape = "/var/tmp/ray-distill-escape-%d-%s" % (os.getpid(), backend)  # world-writable on the host
        out[backend] = {
            "solves": box.run_stdio_case("print(sum(map(int, input().split())))", "1 2", "3").passed,
            "snoop": box._execute(SNOOP, "stdio", "", None).stdout.strip(),
            "fill": box._execute(FILL, "stdio", "", None).stdout.split(),
            "escape": box.run_stdio_case("open(%r, 'w').write('x')" % escape, "", "").reason,
            "escaped": os.path.exists(escape),
            "attack": box._execute(ATTACK, "stdio", json.dumps(host["paths"]), None).stdout,
        }
        if os.path.exists(escape):
            os.remove(escape)
finally:
    assert victim.poll() is None, "the victim was not running"
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
print(json.dumps(out))
"""


def test_contained_when_the_worker_is_not_root():
    """As a non-root worker (uid 1000 with a supplementary group, via setpriv when the tests run as root): bwrap
    runs and grades code, the program sees no other process's environment (a same-uid process holds a secret),
    its tmp is capped, and the host's Unix socket, a world-readable file, a file of the caller's group and the
    caller's own venv are out of reach; /dev/shm is capped. unshare is refused in one line that says why."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become a non-root uid with a supplementary group (setpriv)")
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot become a non-root uid")
    backends = [b for b in S.BACKENDS if shutil.which(b)]
    worker_host = _Host(owner=NON_ROOT_UID, group=SHARED_GROUP)
    try:
        cmd = ["setpriv", f"--reuid={NON_ROOT_UID}", f"--regid={NON_ROOT_UID}", f"--groups={SHARED_GROUP}",
               sys.executable, "-c", AS_WORKER, json.dumps({"python": worker_host.python, "paths": worker_host.paths}),
               *backends]
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "TMPDIR": "/tmp", "HOME": "/tmp"}
        proc = subprocess.run(cmd, env=env, cwd="/tmp", capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["uid"] == NON_ROOT_UID and SHARED_GROUP in out["groups"]
        leaks = {}
        for backend in backends:
            r = out[backend]
            if backend == "unshare":
                assert "refused" in r, (backend, r)
                assert "refused for a non-root caller" in r["refused"] and "\n" not in r["refused"], r
                continue
            assert r["solves"] and r["snoop"] == "ok", (backend, r)
            assert r["fill"][0] == "full" and int(r["fill"][1]) <= 1 << 20, (backend, r)
            assert r["escape"] == S.RUNTIME_ERROR and not r["escaped"], r
            leaks[backend] = _contained(json.loads(r["attack"]), worker_host)
        assert all(not found for found in leaks.values()), leaks
    finally:
        worker_host.close()
