"""Grading a student's samples (evaluation, compression): in the driver vs in Ray tasks across the cluster
(``evaluation.evaluate.grade_samples`` from ``CLUSTER_GRADING_ROWS`` rows on), side by side on the same rows.

    python benchmarks/grading.py                          # 512, 2048 and 8192 math rows (MATH-500 x avg@16: 8,000)
    python benchmarks/grading.py --rows 4096 --repeats 3

The rows are reasoning answers in the shape a student writes them (a think block, then a boxed answer), half of
them right, with LaTeX answers as well as integers so that math-verify parses, not just compares strings. Wall
seconds of each way, alternated ``--repeats`` times; the best of each is compared (ratio driver / cluster, above
1: the cluster is faster), and both ways must give the same verdicts.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd


def sample_rows(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` graded-to-be samples: half right, integer, fraction and square-root answers."""
    from ray_distill import columns as C

    rng = np.random.default_rng(seed)
    a, b = rng.integers(1, 50, n), rng.integers(2, 9, n)
    kinds = rng.integers(0, 3, n)
    refs = [str(x) if k == 0 else (f"\\frac{{{x}}}{{{y}}}" if k == 1 else f"{x}\\sqrt{{{y}}}")
            for x, y, k in zip(a, b, kinds)]
    wrong = rng.random(n) < 0.5
    said = [r if not w else r.replace(str(x), str(x + 1), 1) for r, w, x in zip(refs, wrong, a)]
    completions = [f"<think>Work it out step by step: {x} and {y}.</think>The answer is $\\boxed{{{s}}}$."
                   for x, y, s in zip(a, b, said)]
    return pd.DataFrame({C.COMPLETION: completions, C.ANSWER: refs, C.ERROR: [""] * n})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--repeats", type=int, default=2, help="runs per way; the best of each is compared")
    args = ap.parse_args()

    import ray

    from ray_distill.evaluation.evaluate import GRADING_CHUNK_ROWS, grade_samples

    ray.init(include_dashboard=False, log_to_driver=False)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    print(f"cluster: {cpus} CPUs; chunks of {GRADING_CHUNK_ROWS} rows")
    print(f"{'rows':>6}  {'driver s':>9}  {'cluster s':>9}  {'driver/cluster':>14}")
    for n in args.rows:
        df = sample_rows(n)
        best = {"driver": float("inf"), "cluster": float("inf")}
        graded = {}
        for _ in range(args.repeats):
            for way, rows_on in (("driver", 10**12), ("cluster", 1)):
                start = time.perf_counter()
                graded[way] = grade_samples(df, cluster_rows=rows_on)
                best[way] = min(best[way], time.perf_counter() - start)
        pd.testing.assert_frame_equal(graded["driver"], graded["cluster"])
        print(f"{n:>6}  {best['driver']:>9.2f}  {best['cluster']:>9.2f}  {best['driver'] / best['cluster']:>14.2f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
