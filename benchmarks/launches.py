"""Ray Train launches on a local cluster: Ray's defaults vs the local cluster's settings of ray_distill.runtime.

    python benchmarks/launches.py                 # 3 launches per setting, 200 rows, 2 workers, 1 epoch
    python benchmarks/launches.py --launches 4 --rows 500

Each setting runs in its own process (a fresh driver and local Ray cluster, 2 CPUs) the same ``train_sft`` calls
(the synthetic base corpus on a random ``micro`` student), one after the other, as a job's smoke test and final
training or a test file's trainings do:

- ``ray_defaults``: Ray's own settings, except Ray Train's health-check interval at the 0.5 s every job uses
  (``runtime.WORKER_ENV``);
- ``local_cluster``: plus ``runtime.LOCAL_CLUSTER_ENV`` (no preemption watcher; idle task workers kept 5 minutes,
  so the Ray Data tokenization of a later launch finds its worker, transformers imported, tokenizer cached).

Printed per launch: wall seconds of ``train_sft``, of it the seconds before ``TorchTrainer.fit`` (preflight and the
Ray Data tokenization), and the worker group's start-up (fit to first step); then per setting the mean of the
launches after the first and the ratio local_cluster / ray_defaults.

Measured 2026-12-07 (2-core CPU), 3 launches of 200 rows: ray_defaults 22.2, 20.7, 20.5 s (5.5-5.7 s before fit
each: a fresh worker imports transformers to tokenize); local_cluster 18.9, 13.2, 13.3 s (0.2 s before fit after
the first); mean of the later launches 20.6 vs 13.2 s, ratio 0.64. Within one ``ray-distill run`` the gain is
smaller (a quickstart-sized job: 161 vs 158 s; its launches are minutes apart and few); a test process's many
launches on one cluster get most of it (tests/training/test_sft.py alone: 144 vs 117 s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def one(rows: int, launches: int) -> list[dict]:
    import ray

    import ray_distill.training.sft as sft
    from ray_distill.config import TrainConfig
    from ray_distill.synthetic.student import save_random_student
    from ray_distill.synthetic.tasks import base_corpus

    work = tempfile.mkdtemp(prefix="rd-bench-launches-")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    student = save_random_student("micro", os.path.join(work, "micro"))
    corpus = base_corpus(rows, seed=1)
    cfg = TrainConfig(num_workers=2, epochs=1, batch_size=32, lr=3e-3, max_seq_len=64, max_failures=0)
    fit_started: list[float] = []
    fit = sft.TorchTrainer.fit

    def timed_fit(self):
        fit_started.append(time.perf_counter())
        return fit(self)

    sft.TorchTrainer.fit = timed_fit
    out = []
    for i in range(launches):
        t0 = time.perf_counter()
        result = sft.train_sft(corpus, student, os.path.join(work, f"student{i}"), cfg,
                               storage_path=os.path.join(work, "ray"), run_name=f"launch{i}", log_model=False)
        out.append({"wall_s": time.perf_counter() - t0, "before_fit_s": fit_started[-1] - t0,
                    "startup_s": result.metrics["startup_s"]})
    ray.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--launches", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.rows, args.launches)))
        return

    from ray_distill.runtime import LOCAL_CLUSTER_ENV, WORKER_ENV

    base = {k: v for k, v in os.environ.items() if k not in LOCAL_CLUSTER_ENV}
    base["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = WORKER_ENV["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]
    settings = {"ray_defaults": base, "local_cluster": {**base, **LOCAL_CLUSTER_ENV}}
    later = {}
    for name, env in settings.items():
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--rows", str(args.rows),
                               "--launches", str(args.launches)], env=env, capture_output=True, text=True, check=True)
        runs = json.loads(proc.stdout.strip().splitlines()[-1])
        for i, r in enumerate(runs):
            print(f"{name:14s} launch {i}: {r['wall_s']:5.1f} s  (before fit {r['before_fit_s']:4.1f} s, "
                  f"worker group start-up {r['startup_s']:4.1f} s)")
        rest = runs[1:] or runs
        later[name] = sum(r["wall_s"] for r in rest) / len(rest)
    print(f"mean of the launches after the first: ray_defaults {later['ray_defaults']:.1f} s, local_cluster "
          f"{later['local_cluster']:.1f} s, ratio {later['local_cluster'] / later['ray_defaults']:.2f}")


if __name__ == "__main__":
    main()
