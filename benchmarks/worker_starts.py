"""What a job's tasks and actors wait for before their first line runs, side by side in one run:

- a local Ray cluster whose job has a ``runtime_env`` (even ``env_vars`` alone: what ``runtime.init_ray`` gave the
  local cluster before) vs none (what it does now: the workers inherit the driver's environment);
- a grading actor that counts tokens with the student's tokenizer loaded through transformers (a path) vs the
  Rust backend built in the driver (``models.TokenIds``, what the grading and selection actors get now).

    python benchmarks/worker_starts.py                # the micro student; 6 task waves, empty and grading actors
    python benchmarks/worker_starts.py --repeats 10

Each way runs in a fresh local cluster of 2 CPUs in a subprocess of its own (a cluster per way; Ray allows one
per process). Prints the median seconds from ``.remote()`` to the first result (a wave of 2 tasks, an empty
actor, a grading actor), per way, and the ratios. 2026-12-06, 2 CPUs: empty actor 1.26 s with a runtime_env,
0.72 s without (1.7x); grading actor 5.79 s with a tokenizer path, 1.05 s with TokenIds (5.5x); task waves on
warm workers ~0.05 s either way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, sys, time
import ray

mode, student, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
env = {"TOKENIZERS_PARALLELISM": "false"}
os.environ.update(env)
kwargs = {"runtime_env": {"env_vars": env}} if mode == "runtime_env" else {}
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, **kwargs)
time.sleep(3)  # the cluster settles (Ray starts its idle workers)

from ray_distill.curation.adapters import GradeBatch
from ray_distill.models import token_ids

counter = token_ids(student) if mode == "token_ids" else student


@ray.remote(num_cpus=1)
def ping(i):
    return i


@ray.remote(num_cpus=1)
class Empty:
    pass


Grader = ray.remote(num_cpus=1)(GradeBatch)
out = {"task": [], "actor": [], "grader": []}
for _ in range(repeats):
    start = time.perf_counter()
    ray.get([ping.remote(i) for i in range(2)])
    out["task"].append(time.perf_counter() - start)
    start = time.perf_counter()
    actor = Empty.remote()
    ray.get(actor.__ray_ready__.remote())
    out["actor"].append(time.perf_counter() - start)
    ray.kill(actor)
    time.sleep(1.0)
    start = time.perf_counter()
    actor = Grader.remote(64, True, counter)
    ray.get(actor.__ray_ready__.remote())
    out["grader"].append(time.perf_counter() - start)
    ray.kill(actor)
    time.sleep(1.0)  # the next task wave finds the pool as a stage's next operator would
print("RESULT " + json.dumps(out))
"""


def run(mode: str, student: str, repeats: int) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, student, str(repeats)], capture_output=True,
                          text=True, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{mode} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    got = json.loads(lines[-1].removeprefix("RESULT "))
    return {k: statistics.median(v) for k, v in got.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=6)
    args = ap.parse_args()
    from ray_distill.synthetic.student import save_random_student

    student = save_random_student("micro", tempfile.mkdtemp(prefix="worker-starts-") + "/micro")
    # runtime_env: the old local cluster with a tokenizer path; none: no runtime_env, a tokenizer path;
    # token_ids: no runtime_env, TokenIds (what a job runs now)
    ways = {mode: run(mode, student, args.repeats) for mode in ("runtime_env", "none", "token_ids")}
    print(f"{'way':<12} {'2 tasks (s)':>12} {'empty actor (s)':>16} {'grading actor (s)':>18}")
    for mode, got in ways.items():
        print(f"{mode:<12} {got['task']:>12.2f} {got['actor']:>16.2f} {got['grader']:>18.2f}")
    old, none, new = ways["runtime_env"], ways["none"], ways["token_ids"]
    print(f"tasks: runtime_env / none = {old['task'] / none['task']:.1f}x; empty actor: runtime_env / none = "
          f"{old['actor'] / none['actor']:.1f}x; grading actor: runtime_env+path / "
          f"none+path = {old['grader'] / none['grader']:.1f}x, none+path / none+TokenIds = "
          f"{none['grader'] / new['grader']:.1f}x, old / new = {old['grader'] / new['grader']:.1f}x")


if __name__ == "__main__":
    main()
