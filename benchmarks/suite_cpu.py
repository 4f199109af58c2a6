"""Where the test suite's CPU goes: CPU-seconds per test, per test file and per kind of process.

The suite is CPU-bound on two cores (two pytest-xdist workers, vmstat 0-5% idle), so its wall time is its CPU
work divided by two; this says which tests and which processes that work is. It runs pytest with the given
arguments and, beside it, reads every process's CPU time from /proc once a second; each process's CPU is counted
to the pytest worker it descends from (a job's CLI, its Ray cluster and the cluster's workers included) and,
within that worker, to the test running at that moment. Processes that are not under a worker (a cluster started
by a script, which daemonizes; orphans) are counted apart. Linux only; reading /proc costs ~1% of a core.

    python benchmarks/suite_cpu.py                                   # the whole suite, as `make test` runs it
    python benchmarks/suite_cpu.py -- tests/test_end_to_end.py -n 0  # any pytest arguments after --
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WINDOWS_ENV = "SUITE_CPU_WINDOWS"  # the JSON-lines file the plugin part appends each test's window to
DEFAULT_ARGS = ["-n", "2", "--dist", "loadfile", "--no-loadscope-reorder"]  # the Makefile's `make test`


# ----------------------------------------------------------------------------- the pytest plugin part (-p suite_cpu)

def pytest_configure(config) -> None:
    if os.environ.get(WINDOWS_ENV):
        _append({"worker": os.getpid()})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    start = time.time()
    yield
    if os.environ.get(WINDOWS_ENV):
        _append({"pid": os.getpid(), "test": item.nodeid, "start": start, "end": time.time()})


def _append(record: dict) -> None:
    with open(os.environ[WINDOWS_ENV], "a") as f:
        f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------- the sampler and the report

def _processes(tick: int) -> dict[int, tuple[int, float, str]]:
    """pid -> (parent pid, CPU-seconds so far, name: ``ray::<what it runs>`` or the executable's name)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if "ray::" in cmd:
            name = cmd[cmd.index("ray::"):].split()[0].split("(")[0]
        else:
            name = os.path.basename(cmd.split()[0]) if cmd else "?"
            args = cmd.split()[1:]
            if name.startswith("python") and args:  # name the script or module it runs (or "-c")
                arg = "-c" if args[0] == "-c" else next((a for a in args if not a.startswith("-")), "")
                name = f"python {os.path.basename(arg)}"[:60]
        out[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, name)
    return out


def sample(windows: Path, stop: threading.Event, samples: list) -> None:
    """Once a second: each process's CPU since the last look, counted to (its pytest worker or 0, its name)."""
    tick, last, workers = os.sysconf("SC_CLK_TCK"), {}, set()
    while not stop.is_set():
        t = time.time()
        if windows.exists():
            workers = {r["worker"] for r in map(json.loads, windows.read_text().splitlines()) if "worker" in r}
        now = _processes(tick)
        used: collections.Counter = collections.Counter()
        for pid, (_, cpu, name) in now.items():
            delta = cpu - last[pid][1] if pid in last else cpu  # a new process: all it used since it started
            if delta <= 0:
                continue
            root, hops = pid, 0
            while root not in workers and root in now and hops < 40:
                root, hops = now[root][0], hops + 1
            used[(root if root in workers else 0, name)] += delta
        if last:  # the first look counts every process's whole life: not part of the run
            samples.append((t, used))
        last = now
        stop.wait(max(0.0, 1.0 - (time.time() - t)))


def report(windows: Path, samples: list, top: int) -> None:
    records = [json.loads(line) for line in windows.read_text().splitlines()]
    tests = [r for r in records if "test" in r]
    if not tests:
        print("no test ran")
        return
    by_worker = collections.defaultdict(list)
    for r in tests:
        by_worker[r["pid"]].append((r["start"], r["end"], r["test"]))
    for v in by_worker.values():
        v.sort()
    starts = {w: [s for s, _, _ in v] for w, v in by_worker.items()}
    t0, t1 = min(r["start"] for r in tests), max(r["end"] for r in tests)
    per_test, per_kind, outside = collections.Counter(), collections.Counter(), 0.0
    for t, used in samples:
        if not t0 <= t <= t1 + 2:
            continue
        for (worker, name), cpu in used.items():
            per_kind[name] += cpu
            if worker not in by_worker:
                outside += cpu
                continue
            i = bisect.bisect_right(starts[worker], t - 1.0) - 1  # the sample covers the second before t
            per_test[by_worker[worker][i][2] if i >= 0 else "(worker start-up)"] += cpu
    total = sum(per_test.values()) + outside
    wall = t1 - t0
    print(f"test phase: {wall:.0f} s wall, {total:.0f} CPU-s, {total / wall:.2f} cores busy on average "
          f"({os.cpu_count()} on this machine)")
    per_file = collections.Counter()
    for test, cpu in per_test.items():
        per_file[test.split("::")[0]] += cpu
    for title, counter in (("per test file", per_file), ("per test", per_test), ("per kind of process", per_kind)):
        print(f"\n{title} (CPU-s, share of the test phase's CPU):")
        for key, cpu in counter.most_common(top):
            print(f"{cpu:9.1f}  {100 * cpu / total:5.1f}%  {key}")
    print(f"\nnot in a test (the pytest process of xdist, clusters started by scripts, orphans): {outside:.1f} CPU-s "
          f"({100 * outside / total:.1f}%)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=30, help="rows per table")
    parser.add_argument("pytest_args", nargs="*", help="after --: pytest's arguments (default: as `make test`)")
    args = parser.parse_args()
    windows = Path(tempfile.mkdtemp(prefix="suite-cpu-")) / "windows.jsonl"
    env = {**os.environ, WINDOWS_ENV: str(windows),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH")]))}
    samples: list = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(windows, stop, samples), daemon=True)
    sampler.start()
    start = time.time()
    rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "suite_cpu",
                          *(args.pytest_args or DEFAULT_ARGS)], cwd=ROOT, env=env)
    stop.set()
    sampler.join()
    print(f"\npytest exited {rc} after {time.time() - start:.0f} s\n")
    report(windows, samples, args.top)
    return rc


if __name__ == "__main__":
    sys.exit(main())
