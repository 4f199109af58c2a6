"""Training data through Ray Data: what the driver and each Ray Train worker hold, at 1x and 10x the corpus.

    python benchmarks/train_data.py                      # 2,000 rows at 1x; sizes 1 10; 2 workers, 1 epoch
    python benchmarks/train_data.py --rows 500 --sizes 1 4

Each (path, size) runs in its own process (a fresh driver and local Ray cluster) on the same rows (the
synthetic base corpus) and the same random ``micro`` student:

- ``ray_data``: ``train_sft`` as jobs run it: the rows are tokenized in a Ray Data plan (materialized in the
  object store), the driver keeps three small figures per row, each worker reads only its share of each
  epoch's batches (``held_rows_max``: the most rows one worker held at once).
- ``driver``: the path before it, up to the launch: the driver tokenizes every row into Python lists and puts
  them in the object store (what it held before this change; every worker then held all of them).

Measured 2026-12-06 (2-core CPU), ``--rows 1000 --sizes 1 10``: each of the 2 workers held 500 of 1,000 and 5,000
of 10,000 rows; the driver's RSS growth after start-up 57.2 -> 60.8 MB (Ray Data; the driver keeps three figures
per row) vs 31.1 -> 40.3 MB (driver-side: ~1 KB per 64-token row, every worker holding every row); wall 25.9 and
33.8 s for the whole training vs 0.5 and 1.5 s for the driver-side tokenization alone. The rows here are short
(64 tokens); the driver-side path grows with tokens per row (a 4k-token reasoning trace is ~230 KB of Python ints).

Printed per run: rows, the driver's peak RSS (``ru_maxrss`` of the driver process only) and its growth over
the RSS after start-up, wall time; for ``ray_data`` also rows held per worker. Then, per path, the ratio
10x/1x of the driver's peak RSS growth.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(path: str, rows: int, workers: int) -> dict:
    import ray

    from ray_distill.config import TrainConfig
    from ray_distill.synthetic.student import save_random_student
    from ray_distill.synthetic.tasks import base_corpus

    work = tempfile.mkdtemp(prefix="rd-bench-train-data-")
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    student = save_random_student("micro", os.path.join(work, "micro"))
    corpus = base_corpus(rows, seed=1)
    start_rss = rss_mb()
    t0 = time.perf_counter()
    out: dict = {"path": path, "rows": rows}
    if path == "ray_data":
        from ray_distill.training import train_sft

        cfg = TrainConfig(num_workers=workers, epochs=1, batch_size=64, lr=3e-3, max_seq_len=64, max_failures=0)
        m = train_sft(corpus, student, os.path.join(work, "student"), cfg, storage_path=os.path.join(work, "ray"),
                      run_name="bench").metrics
        out.update(held_rows_max=m["held_rows_max"], held_rows_by_rank=m["held_rows_by_rank"], steps=m["steps"])
    else:
        from ray_distill.models import load_tokenizer
        from ray_distill.training.data import encode_example

        tokenizer = load_tokenizer(student)
        examples = [encode_example(tokenizer, r["messages"], 64) for r in corpus]
        ref = ray.put([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
        del ref
    out.update(wall_s=time.perf_counter() - t0, peak_rss_mb=rss_mb(), rss_growth_mb=rss_mb() - start_rss)
    ray.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2000, help="corpus rows at 1x")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one (path, rows) and print JSON
    args = ap.parse_args()
    if args.one:
        path, rows = args.one.split(":")
        print("RESULT " + json.dumps(one(path, int(rows), args.workers)))
        return
    results = []
    for path in ("ray_data", "driver"):
        for size in args.sizes:
            proc = subprocess.run([sys.executable, __file__, "--one", f"{path}:{args.rows * size}",
                                   "--workers", str(args.workers)], capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.exit(f"{path} x{size} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
            r = json.loads(line[0][7:])
            results.append({**r, "size": size})
            held = f"  held per worker {r['held_rows_by_rank']} of {r['rows']}" if "held_rows_by_rank" in r else ""
            print(f"{path:<9} x{size:<3} rows {r['rows']:>7}  driver peak RSS {r['peak_rss_mb']:7.1f} MB "
                  f"(+{r['rss_growth_mb']:6.1f} MB after start-up)  wall {r['wall_s']:6.1f} s{held}", flush=True)
    lo, hi = min(args.sizes), max(args.sizes)
    for path in ("ray_data", "driver"):
        small = next(r for r in results if r["path"] == path and r["size"] == lo)
        big = next(r for r in results if r["path"] == path and r["size"] == hi)
        print(f"{path:<9} driver peak RSS {hi}x/{lo}x {big['peak_rss_mb'] / small['peak_rss_mb']:.2f}, "
              f"growth after start-up {small['rss_growth_mb']:.1f} -> {big['rss_growth_mb']:.1f} MB")


if __name__ == "__main__":
    main()
