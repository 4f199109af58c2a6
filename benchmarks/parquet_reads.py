"""Ray Data parquet reads of the plane's small files: Ray's default datasource vs ``curation.plane.read_parquet``.

    python benchmarks/parquet_reads.py                 # 4 reads per round, 2 rounds, a 3-file directory
    python benchmarks/parquet_reads.py --reads 8 --files 20

The streaming plane reads small parquet files it wrote itself several times a job (the questions of a phase,
the samples still to generate, the graded rows the judge reads back). Each setting runs in its own process (a
fresh driver and local Ray cluster, 3 CPUs, as a 2-core laptop's job gets) the same reads, each materialized:

- ``ray_default``: ``ray.data.read_parquet`` as Ray 2.5x reads by default (``DataContext.use_datasource_v2``):
  a pool of footer-reading actors, a worker process each, for every read;
- ``plane``: ``ray_distill.curation.plane.read_parquet`` (the same read on Ray Data's first parquet datasource).

Printed per round: wall seconds and the machine's CPU-seconds (all processes: the cluster's workers included,
from /proc/stat; run it on an otherwise idle machine), the rows read (the same for both), and the ratio
plane / ray_default of the later rounds.

Measured 2026-12-07 (2-core CPU), 4 reads of a 3-file directory per round, two runs: ray_default 14.1-19.0 s and
27-36 CPU-s in the first round, 8.2-16.5 s and 16-33 CPU-s in the second; plane 3.6-4.4 s and 6.7-7.5 CPU-s (the
first round starts Ray Data's own actors), then 0.8-1.1 s and 1.4-1.7 CPU-s: ratios 0.13 (wall) and 0.11 (CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def machine_cpu_s() -> float:
    """CPU-seconds the whole machine has spent (user + system, every process), from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def one(setting: str, files: int, reads: int, rounds: int) -> list[dict]:
    import pandas as pd
    import ray

    from ray_distill.curation.plane import read_parquet

    work = tempfile.mkdtemp(prefix="rd-bench-parquet-")
    for i in range(files):
        pd.DataFrame({"question_id": [f"q{i}-{j}" for j in range(100)], "question": ["1+1=?"] * 100}).to_parquet(
            os.path.join(work, f"part-{i:05d}.parquet"))
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
    time.sleep(5)  # the cluster's own start-up is not measured
    read = read_parquet if setting == "plane" else ray.data.read_parquet
    out = []
    for r in range(rounds):
        cpu0, t0 = machine_cpu_s(), time.perf_counter()
        rows = sum(read(work).materialize().count() for _ in range(reads))
        out.append({"round": r, "wall_s": time.perf_counter() - t0, "cpu_s": machine_cpu_s() - cpu0, "rows": rows})
    ray.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--reads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.files, args.reads, args.rounds)))
        return
    results = {}
    for setting in ("ray_default", "plane"):
        proc = subprocess.run([sys.executable, __file__, "--one", setting, "--files", str(args.files), "--reads",
                               str(args.reads), "--rounds", str(args.rounds)], capture_output=True, text=True,
                              check=True)
        results[setting] = json.loads(proc.stdout.strip().splitlines()[-1])
        for r in results[setting]:
            print(f"{setting:12s} round {r['round']}: {r['wall_s']:6.1f} s wall  {r['cpu_s']:6.1f} CPU-s  "
                  f"{r['rows']} rows", flush=True)
    later = {k: v[1:] or v for k, v in results.items()}
    for what in ("wall_s", "cpu_s"):
        mean = {k: sum(r[what] for r in v) / len(v) for k, v in later.items()}
        print(f"{what}: plane / ray_default = {mean['plane'] / mean['ray_default']:.2f} (rounds after the first)")


if __name__ == "__main__":
    main()
