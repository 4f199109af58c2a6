"""The code sandbox on real namespaces (bwrap and the unshare fallback): hostile programs end as
failed tests with the right reason, and the caller goes on."""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ray_distill.curation import sandbox as S

ROOT = Path(__file__).resolve().parents[2]

# Generous wall clock: on a loaded machine, starting Python inside the sandbox can take over a second.
FAST = S.Limits(timeout_s=5.0, memory_mb=256, max_processes=8, max_output_bytes=64 * 1024)


@functools.lru_cache(maxsize=None)
def _box(backend: str) -> S.Sandbox:
    if shutil.which(backend) is None:
        pytest.skip(f"{backend} is not installed")
    box = S.Sandbox(FAST, backend=backend)
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
    assert S._last_line(stderr) == "BlockingIOError: [Errno 11] Resource temporarily unavailable"
    assert S._last_line("no exception here\nlast words\n") == "last words"
    assert S._last_line("") == ""


def test_correct_and_wrong_stdio_programs(box):
    tests = {"type": "stdio", "cases": [{"input": "1 2\n", "output": "3\n"}, {"input": "2 2\n", "output": "5"}]}
    results = box.run_tests("a, b = map(int, input().split())\nprint(a + b)\n", tests, stop_on_failure=False)
    assert [r.passed for r in results] == [True, False]
    assert results[1].reason == S.WRONG_OUTPUT and "expected '5', got '4'" in results[1].detail


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
    if box.resolve() == "bwrap":  # read-only root: even world-writable directories
        probe = f"/var/tmp/ray-distill-escape-{os.getpid()}"
        assert "Read-only file system" in _stdio(box, f"open({probe!r}, 'w').write('x')").detail
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
    with pytest.raises(S.SandboxUnavailable, match="backend 'auto' needs bubblewrap.*format.code.backend: unshare"):
        S.detect_backend.__wrapped__("auto")
    assert S.detect_backend.__wrapped__("unshare") == "unshare"


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


NON_ROOT_UID = 1000  # the KubeRay image's `ray` user
# Run as a non-root uid: the sandbox as a Ray worker of the KubeRay image would use it (no uid drop).
AS_WORKER = """import json, os, shutil, subprocess, sys
from ray_distill.curation import sandbox as S
from tests.curation.test_sandbox import FAST, FILL, SECRET_ENV, SNOOP
assert os.geteuid() != 0
victim = subprocess.Popen(["sh", "-c", "sleep 60; :", SECRET_ENV], env={SECRET_ENV: "s3cret", "PATH": "/usr/bin:/bin"})
out = {"uid": os.geteuid()}
try:
    for backend in sys.argv[1:]:
        # the system python3: this test's interpreter may sit under a directory only root may search
        box = S.Sandbox(S.Limits(**{**FAST.__dict__, "max_tmp_bytes": 1 << 20}), backend=backend,
                        python=shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin"))
        escape = "/var/tmp/ray-distill-escape-%d-%s" % (os.getpid(), backend)  # world-writable on the host
        out[backend] = {
            "solves": box.run_stdio_case("print(sum(map(int, input().split())))", "1 2", "3").passed,
            "snoop": box._execute(SNOOP, "stdio", "", None).stdout.strip(),
            "fill": box._execute(FILL, "stdio", "", None).stdout.split(),
            "escape": box.run_stdio_case("open(%r, 'w').write('x')" % escape, "", "").reason,
            "escaped": os.path.exists(escape),
        }
        if os.path.exists(escape):
            os.remove(escape)
finally:
    assert victim.poll() is None, "the victim was not running"
    victim.kill()
print(json.dumps(out))
"""


def test_contained_when_the_worker_is_not_root():
    """As a non-root worker (uid 1000 via setpriv when the tests run as root): code runs and is graded, the
    program sees no other process's environment (a same-uid process holds a secret), its tmp is capped;
    with bwrap it cannot write anywhere else either (with unshare it writes wherever the uid may: documented)."""
    backends = [b for b in S.BACKENDS if shutil.which(b)]
    cmd = [sys.executable, "-c", AS_WORKER, *backends]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot become a non-root uid")
        cmd = ["setpriv", f"--reuid={NON_ROOT_UID}", f"--regid={NON_ROOT_UID}", "--clear-groups", *cmd]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "TMPDIR": "/tmp", "HOME": "/tmp"}
    proc = subprocess.run(cmd, env=env, cwd="/tmp", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["uid"] != 0
    for backend in backends:
        r = out[backend]
        assert r["solves"] and r["snoop"] == "ok", (backend, r)
        assert r["fill"][0] == "full" and int(r["fill"][1]) <= 1 << 20, (backend, r)
        if backend == "bwrap":
            assert r["escape"] == S.RUNTIME_ERROR and not r["escaped"], r
