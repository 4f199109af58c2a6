"""lm-evaluation-harness on several models (the base and the exported student): one Ray task per model, run
concurrently (the GPU way, and every way before), vs one task for all, one model after the other (the CPU way of
``evaluation.harness.run_harness_all``), side by side in one run.

    python benchmarks/harness_processes.py             # 2 random micro students, jobs/public_data.yaml's harness task
    python benchmarks/harness_processes.py --models 3

Both ways run the same lm_eval task (vLLM backend, CPU) on the same models in one local cluster of 2 CPUs, per task
a fresh worker (``max_calls=1``, as the job runs it). Prints per way the wall seconds and the CPU-seconds of its
task processes (each reports its own ``getrusage``: importing vLLM and lm_eval included), their ratio, and whether
both ways gave the same scores.
2026-12-07, 2 CPUs (a host ~2.7x slower than that morning, a test job running beside it), 2 micro students: one task
per model 108.4 s wall / 78.8 CPU-s, one task for all 72.3 s / 51.3 CPU-s: CPU 0.65, wall 0.67; the same results.
The same machine idle, later: 24.1 s / 45.2 CPU-s vs 38.3 s / 35.6 CPU-s: CPU 0.79, wall 1.59. One task saves CPU
always, and wall time only where the cores are busy anyway (a test suite, a shared node); on idle cores the
concurrent tasks finish sooner.
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(model_args: list[dict], cfg, include_path: str) -> tuple[list[dict], float]:
    """The harness on ``model_args`` in this process, and this process's CPU-seconds so far."""
    from ray_distill.evaluation.harness import evaluate_models_in_process

    results = evaluate_models_in_process(model_args, cfg, include_path)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return results, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=2)
    args = parser.parse_args()

    import ray

    from ray_distill.config import load_config
    from ray_distill.evaluation.harness import harness_model_args
    from ray_distill.generation.actor import vllm_cpu_env
    from ray_distill.synthetic.student import save_random_student

    logging.basicConfig(level=logging.WARNING)
    job = load_config(ROOT / "jobs" / "public_data.yaml")
    cfg, student = job.eval.harness, job.student
    include_path = str(ROOT / "jobs" / "harness")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    task = ray.remote(max_calls=1)(timed).options(num_cpus=student.serving.resources.num_cpus,
                                                  runtime_env=vllm_cpu_env())
    with tempfile.TemporaryDirectory() as tmp:
        models = [save_random_student("micro", f"{tmp}/m{i}", seed=i) for i in range(args.models)]
        margs = [harness_model_args(m, cfg, student) for m in models]
        ways = {"one task per model": [[a] for a in margs], "one task for all": [margs]}
        out = {}
        for name, groups in ways.items():
            start = time.perf_counter()
            ran = ray.get([task.remote(g, cfg, include_path) for g in groups])
            out[name] = (time.perf_counter() - start, sum(cpu for _, cpu in ran), [r for rs, _ in ran for r in rs])
    ray.shutdown()
    print(f"lm-evaluation-harness ({', '.join(cfg.tasks)}, vLLM on CPU) on {args.models} micro students, 2 CPUs")
    for name, (wall, cpu, _) in out.items():
        print(f"{name:>20}: {wall:6.1f} s wall, {cpu:6.1f} CPU-s in the task processes")
    (w1, c1, r1), (w2, c2, r2) = out.values()
    print(f"one task for all / one per model: CPU {c2 / c1:.2f}, wall {w2 / w1:.2f}; same results: {r1 == r2}")


if __name__ == "__main__":
    main()
