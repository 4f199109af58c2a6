"""The code sandbox on real namespaces (bwrap and the unshare fallback): hostile programs end as
failed tests with the right reason, and the caller goes on."""

from __future__ import annotations

import functools
import os
import shutil
import socket

import pytest

from ray_distill.curation import sandbox as S

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
    with pytest.raises(S.SandboxUnavailable, match="bwrap: not installed; unshare: not installed"):
        S.detect_backend.__wrapped__("auto")


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
