"""Curation at 1x, 10x and 30x the pool: the streaming plane against the driver-side path, side by side.

    python benchmarks/scale.py                        # 200 questions x M=4 at 1x; sizes 1 10 30
    python benchmarks/scale.py --questions 50 --sizes 1 4

Each (path, size) runs in its own process (a fresh driver and local Ray cluster) on the same questions
(the synthetic ``arith`` family) and the same scripted teacher, ``rambling``: reasoning-length traces with
a long-tailed length (median ~700 characters, 1 in 100 over ~6,000; tokens are characters), generated,
graded and selected (farthest-P, P=2):

- ``plane``: ``ray_distill.curation.plane`` (what ``ray-distill run`` does): questions on storage →
  generate the missing samples (persisted by the workers) → grade into question buckets on storage →
  one selection task per bucket. The driver sees counters.
- ``driver``: the path before it: ``GenerationStore.get_or_generate`` returns every sample to the driver,
  grading is ``from_pandas → map_batches → to_pandas``, selection the same.
- ``adaptive``: adaptive sampling (P=2, M=``--adaptive-m``, default 8: rounds of 4, 6, 8 samples) with no wave
  (``adaptive_stream.curate_adaptive_stream``, what a job with ``selection.adaptive.enabled`` does): each question's
  next round starts when its own round is graded; rows go from task to actor as Ray objects and into the buckets on
  storage, the driver holds counters per question; then the same selection.

``--engine-starts`` instead runs adaptive sampling with a vLLM teacher (a random ``micro`` checkpoint on CPU, so
every question is sampled until it is hopeless: two rounds) inside one ``keep_engines`` block and prints the
rounds and the engines built for the teacher (goal: 1, whatever the rounds).

Measured 2026-12-07 (2-core CPU), ``--sizes 1 30 --questions 100``, the three paths in one run: driver peak RSS
30x/1x plane 1.08 (298.6 -> 321.2 MB), driver 1.79 (304.9 -> 545.5 MB), adaptive 1.05 (285.1 -> 300.3 MB); rows/s
30x/1x 8.49, 6.44, 5.72. Adaptive sampling as it is now (each question's samples streamed back as they finish),
``--paths adaptive``: 1.09 (285.8 -> 310.5 MB; goal <= 1.2), 410 and 12,126 graded samples in 2 rounds, 4.0 s and
14.7 s (+0.6 and 10.4 s of selection). Earlier that day, its first version (a chunk's samples back together) beside
the rounds as waves of plans it replaced (``plane.curate_adaptive``, since removed): 1.05 vs 1.09; the same
samples and 200 / 6,000 selected rows; wall 5.5 s vs 26.4 s at 1x, 20.0 s vs 54.1 s at 30x.
``--engine-starts --questions 16`` (no waves): 2 rounds, 96 samples, 1 engine start for the teacher.

Printed per run: rows, wall time per step, rows/s, and the driver's peak RSS (``ru_maxrss`` of the driver
process only: Ray's workers are other processes) and its peak over the RSS after start-up. Then, per
path, the ratios 30x/1x of peak RSS (goal for the plane: <= 1.2) and of rows/s (goal: >= 1).
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


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one(path: str, questions: int, m: int, cpus: int, adaptive_m: int = 8) -> dict:
    import ray

    from ray_distill import columns as C
    from ray_distill.config import EngineConfig, ResourcesConfig, SamplingConfig, TeacherConfig
    from ray_distill.curation import plane
    from ray_distill.curation.adapters import GradeBatch, select_dataset
    from ray_distill.generation.store import GenerationStore
    from ray_distill.synthetic.tasks import make_questions

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    rows = make_questions("arith", questions, 1, 3, seed=1)
    teacher = TeacherConfig(name="rambling", engine=EngineConfig(kind="scripted", persona="rambling"),
                            sampling=SamplingConfig(n=m, temperature=0.8, max_tokens=8192),
                            resources=ResourcesConfig(num_actors=1, batch_size=64))
    tmp = tempfile.mkdtemp(prefix="ray-distill-scale-")
    store = GenerationStore(os.path.join(tmp, "generations"))
    start_rss = current_rss_mb()
    wall = {}
    t0 = time.perf_counter()
    if path == "plane":
        url = plane.write_questions(rows, os.path.join(tmp, "work", "questions.parquet"))
        del rows
        made = plane.generate_missing(store, url, teacher, m, os.path.join(tmp, "work"))
        wall["generate"] = time.perf_counter() - t0
        out = plane.grade(store, url, teacher, m, os.path.join(tmp, "work"), plane.Grading(8192, True, None), made)
        wall["grade"] = time.perf_counter() - t0 - wall["generate"]
        sel = plane.select_buckets(out.graded_url, os.path.join(tmp, "work", "selected"), plane.Selection(2, 0, None),
                                   os.path.join(tmp, "rejects"))
        n_rows, n_selected = out.counters["requested"], sel["rows"]
    elif path == "adaptive":
        from ray_distill.curation.adaptive import SamplingPlan

        url = plane.write_questions(rows, os.path.join(tmp, "work", "questions.parquet"))
        del rows
        from ray_distill.curation.adaptive_stream import curate_adaptive_stream

        out = curate_adaptive_stream(store, url, teacher, SamplingPlan(target=2, max_samples=adaptive_m),
                                     os.path.join(tmp, "work"), plane.Grading(8192, True, None))
        wall["generate"], wall["grade"] = time.perf_counter() - t0, 0.0  # rounds of both
        sel = plane.select_buckets(out.graded_url, os.path.join(tmp, "work", "selected"), plane.Selection(2, 0, None),
                                   os.path.join(tmp, "rejects"))
        n_rows, n_selected, wall["rounds"] = out.counters["rows"], sel["rows"], out.rounds
    else:
        gen, _ = store.get_or_generate(rows, teacher, m)
        wall["generate"] = time.perf_counter() - t0
        graded = ray.data.from_pandas(gen).map_batches(
            GradeBatch, fn_constructor_kwargs={"max_tokens": 8192, "require_think": True}, batch_format="pandas",
            batch_size=256, num_cpus=1, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cpus)).to_pandas()
        wall["grade"] = time.perf_counter() - t0 - wall["generate"]
        ok = graded[graded[C.CORRECT] & graded[C.FORMAT_OK]]
        n_rows, n_selected = len(graded), len(select_dataset(ok, 2, 0, None).to_pandas())
    total = time.perf_counter() - t0
    wall["select"] = total - wall["generate"] - wall["grade"]
    rounds = wall.pop("rounds", None)
    ray.shutdown()
    return {"path": path, "questions": questions, "rows": n_rows, "selected": n_selected,
            "wall": {k: round(v, 1) for k, v in wall.items()}, "rows_per_s": round(n_rows / total, 1),
            "peak_rss_mb": round(rss_mb(), 1), "start_rss_mb": round(start_rss, 1), "rounds": rounds}


def engine_starts(questions: int, adaptive_m: int, cpus: int) -> dict:
    """Adaptive rounds with a vLLM teacher in one ``keep_engines`` block: rounds run, engines built."""
    import ray

    from ray_distill.config import EngineConfig, ResourcesConfig, SamplingConfig, TeacherConfig
    from ray_distill.curation import plane
    from ray_distill.curation.adaptive import SamplingPlan
    from ray_distill.curation.adaptive_stream import curate_adaptive_stream
    from ray_distill.generation import hosts
    from ray_distill.generation.store import GenerationStore
    from ray_distill.synthetic.student import save_random_student
    from ray_distill.synthetic.tasks import make_questions

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    tmp = tempfile.mkdtemp(prefix="ray-distill-scale-")
    model = save_random_student("micro", os.path.join(tmp, "micro"))
    teacher = TeacherConfig(name="micro", engine=EngineConfig(kind="vllm", model=model, max_model_len=256),
                            sampling=SamplingConfig(temperature=1.0, max_tokens=16),
                            resources=ResourcesConfig(num_actors=1, batch_size=64))
    url = plane.write_questions(make_questions("arith", questions, 1, 3, seed=1),
                                os.path.join(tmp, "questions.parquet"))
    with hosts.keep_engines():
        out = curate_adaptive_stream(GenerationStore(os.path.join(tmp, "generations")), url, teacher,
                                     SamplingPlan(target=2, max_samples=adaptive_m), os.path.join(tmp, "work"),
                                     plane.Grading(16, True, None))
    starts = hosts.POOL.engine_loads[teacher.name]
    ray.shutdown()
    return {"rounds": out.rounds, "engine_starts": starts, "rows": out.counters["rows"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=int, default=200, help="questions at 1x")
    ap.add_argument("--m", type=int, default=4, help="samples per question")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 30])
    ap.add_argument("--paths", nargs="+", default=["plane", "driver", "adaptive"],
                    choices=["plane", "driver", "adaptive"])
    ap.add_argument("--adaptive-m", type=int, default=8, help="M of the adaptive path")
    ap.add_argument("--engine-starts", action="store_true", help="count a vLLM teacher's engine starts over rounds")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--one", nargs=2, metavar=("PATH", "QUESTIONS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        result = one(args.one[0], int(args.one[1]), args.m, args.cpus, args.adaptive_m)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if args.engine_starts:
        r = engine_starts(args.questions, args.adaptive_m, args.cpus)
        print(f"adaptive sampling, vLLM teacher: {r['rounds']} rounds, {r['rows']} samples, "
              f"{r['engine_starts']} engine start(s) for the teacher")
        return
    results = []
    for size in args.sizes:
        for path in args.paths:
            proc = subprocess.run([sys.executable, __file__, "--one", path, str(args.questions * size),
                                   "--m", str(args.m), "--cpus", str(args.cpus), "--adaptive-m", str(args.adaptive_m)],
                                  capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{path} at {size}x failed:\n{proc.stderr[-3000:]}")
            r = json.loads(line[7:]) | {"size": size}
            results.append(r)
            print(f"{path:>6} {size:>3}x  rows {r['rows']:>7}  selected {r['selected']:>6}  "
                  f"wall gen/grade/select {r['wall']['generate']:>6.1f}/{r['wall']['grade']:>6.1f}/"
                  f"{r['wall']['select']:>5.1f} s  {r['rows_per_s']:>7.1f} rows/s  driver peak RSS "
                  f"{r['peak_rss_mb']:>7.1f} MB (+{r['peak_rss_mb'] - r['start_rss_mb']:.1f} over start)"
                  + (f"  rounds {r['rounds']}" if r["rounds"] else ""), flush=True)
    lo, hi = min(args.sizes), max(args.sizes)
    for path in args.paths:
        a = next(r for r in results if r["path"] == path and r["size"] == lo)
        b = next(r for r in results if r["path"] == path and r["size"] == hi)
        print(f"{path}: {hi}x/{lo}x driver peak RSS {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}, "
              f"rows/s {b['rows_per_s'] / a['rows_per_s']:.2f}")


if __name__ == "__main__":
    main()
