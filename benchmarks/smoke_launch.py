"""A smoke test's training, two ways: one Ray Train launch per candidate teacher (``train_sft`` each) vs
all candidates in one launch (``train_sft_many``), side by side on the same corpora.

    python benchmarks/smoke_launch.py                       # 3 candidates x 256 rows, 'tiny', 2 workers
    python benchmarks/smoke_launch.py --candidates 4 --rows 532 --epochs 12

Each candidate's corpus is a different teacher persona's solutions to the same questions (as in the
quickstart). Both ways train the same students (the test suite checks the weights are identical), so
the difference is the launches' fixed cost: the worker group's start (processes, imports, process group),
the model build, and the end of the run. Wall seconds of each way, alternated ``--repeats`` times; the
best of each is compared (single runs on a shared machine are noise).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from ray_distill.columns import MESSAGES, QUESTION
from ray_distill.config import TrainConfig
from ray_distill.synthetic.student import save_random_student
from ray_distill.synthetic.tasks import make_questions
from ray_distill.synthetic.teachers import write_solution

PERSONAS = ("concise", "verbose", "sloppy")


def corpora(candidates: int, rows: int) -> list[list[dict]]:
    qs = make_questions("arith", rows, 1, 3, seed=0)
    return [[{MESSAGES: [{"role": "user", "content": q[QUESTION]},
                         {"role": "assistant", "content": write_solution(PERSONAS[c % 3], q[QUESTION], c)}]}
             for q in qs] for c in range(candidates)]


def separate(data: list[list[dict]], base: str, cfg: TrainConfig, work: str, tag: str) -> tuple[float, list[float]]:
    from ray_distill.training import train_sft

    t0 = time.perf_counter()
    results = [train_sft(rows, base, f"{work}/{tag}-{i}", cfg, storage_path=f"{work}/ray", run_name=f"{tag}-{i}",
                         log_model=False) for i, rows in enumerate(data)]
    return time.perf_counter() - t0, [r.metrics["train_loss"] for r in results]


def together(data: list[list[dict]], base: str, cfg: TrainConfig, work: str, tag: str) -> tuple[float, list[float]]:
    from ray_distill.training import SFTJob, train_sft_many

    t0 = time.perf_counter()
    jobs = [SFTJob(rows, f"{work}/{tag}-{i}") for i, rows in enumerate(data)]
    results = train_sft_many(jobs, base, cfg, storage_path=f"{work}/ray", run_name=tag, log_model=False)
    return time.perf_counter() - t0, [r.metrics["train_loss"] for r in results]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--candidates", type=int, default=3)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="runs per way; the best of each is compared")
    args = ap.parse_args()

    import ray

    from ray_distill.runtime import WORKER_ENV

    ray.init(num_cpus=args.workers + 1, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": WORKER_ENV})
    work = tempfile.mkdtemp(prefix="rd-bench-smoke-")
    base = save_random_student(args.preset, os.path.join(work, "base"))
    data = corpora(args.candidates, args.rows)
    cfg = TrainConfig(num_workers=args.workers, epochs=args.epochs, batch_size=16, max_seq_len=128, max_failures=0)
    print(f"{args.candidates} candidates x {args.rows} rows, {args.epochs} epochs, preset {args.preset}, "
          f"{args.workers} workers")
    walls: dict[str, list[float]] = {"one launch each": [], "one launch for all": []}
    for r in range(args.repeats):  # alternated, each on fresh run names (nothing resumed)
        wall, loss_a = separate(data, base, cfg, work, f"sep{r}")
        walls["one launch each"].append(wall)
        wall, loss_b = together(data, base, cfg, work, f"all{r}")
        walls["one launch for all"].append(wall)
        assert all(abs(a - b) < 1e-6 * max(1.0, abs(a)) for a, b in zip(loss_a, loss_b)), (loss_a, loss_b)
    each, one = min(walls["one launch each"]), min(walls["one launch for all"])
    print(f"{'way':<22}{'best wall s':>12}{'all runs':>28}")
    for name, ws in walls.items():
        print(f"{name:<22}{min(ws):>12.1f}{'  '.join(f'{w:.1f}' for w in ws):>28}")
    print(f"one launch for all / one launch each: {one / each:.2f} "
          f"(saved {each - one:.1f} s, {(each - one) / max(1, args.candidates - 1):.1f} s per extra candidate)")
    ray.shutdown()


if __name__ == "__main__":
    main()
