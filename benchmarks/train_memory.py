"""Training memory and checkpoint size, old vs new code side by side: per-rank peak host RSS of FSDP
workers and checkpoint bytes per rank, on the real SmolLM2-135M checkpoint with 2 Ray Train workers.

    python benchmarks/train_memory.py                        # baseline: the commit before sharded loading
    python benchmarks/train_memory.py --baseline HEAD~3 --steps 2 --max-seq-len 128

Each side runs in its own process with its own local Ray (2 CPUs), from its own source tree: the new side
from this checkout, the old side from ``git archive <baseline>`` of this repository. Both train the same
rows for the same steps with ``strategy: fsdp`` (fp32), checkpoint once (at the end of the epoch) and
export. A wrapper around the worker loop records, in every worker process, its RSS when the loop starts
(torch, transformers and Ray imported: the floor both sides share) and its peak RSS (``ru_maxrss``) when
the loop returns, so loading, sharding, training, the checkpoint and the final export are all inside the
peak. Checkpoint bytes are read from the storage afterwards: the old checkpoint is one directory rank 0
writes (gathered weights + optimizer); the new one is one ``__<rank>_0.distcp`` file per rank (plus
rank 0's small ``.metadata`` and loop state).

Measured on a shared 2-core CPU machine (2 steps of 4 x 128 tokens): peak RSS per rank 0.54x (rank 0)
and 0.56x (rank 1) of the old code's (2133 / 2135 MB vs 3967 / 3838 MB), 0.48x / 0.50x above the shared
445 MB floor; checkpoint bytes 866 MB per rank vs 1731 MB on rank 0 (0.500x); same train loss. Rank 0 was
at 0.62x while it gathered the final export next to the optimizer state (2481 MB, ``--baseline`` of that
commit); the loop now frees the optimizer state and gradients before the export, so rank 0's peak is
rank 1's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The last commit whose training loaded the full fp32 model on every rank and gathered rank-0 checkpoints.
BASELINE = "44da2cd"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def side(args: argparse.Namespace) -> None:
    """One side, in this process: train, then print one JSON line of figures."""
    import ray

    from ray_distill.columns import MESSAGES, QUESTION
    from ray_distill.config import TrainConfig
    from ray_distill.synthetic.tasks import make_questions
    from ray_distill.synthetic.teachers import write_solution
    from ray_distill.training import sft

    loop = sft.train_loop_per_worker
    out_dir = os.path.join(args.work, "rss")
    os.makedirs(out_dir, exist_ok=True)

    def measured_loop(config: dict) -> None:
        import resource

        import ray.train

        floor = rss_mb()
        loop(config)
        rank = ray.train.get_context().get_world_rank()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"floor_mb": floor, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, f)

    sft.train_loop_per_worker = measured_loop
    qs = make_questions("arith", args.steps * args.batch_size, 2, 6, seed=0)
    rows = [{MESSAGES: [{"role": "user", "content": q[QUESTION]},
                        {"role": "assistant", "content": write_solution("verbose", q[QUESTION], 0)}]} for q in qs]
    cfg = TrainConfig(num_workers=2, cpus_per_worker=1, epochs=1, batch_size=args.batch_size,
                      max_seq_len=args.max_seq_len, strategy="fsdp", lr=1e-5, max_failures=0)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    result = sft.train_sft(rows, args.model, os.path.join(args.work, "student"), cfg,
                           storage_path=os.path.join(args.work, "ray"), run_name="memory")
    ray.shutdown()
    ckpt = result.checkpoint_path
    files = {name: os.path.getsize(os.path.join(ckpt, name)) for name in os.listdir(ckpt)}
    ranks = [json.load(open(os.path.join(out_dir, f"rank{r}.json"))) for r in range(2)]
    print(json.dumps({"ranks": ranks, "checkpoint_files": files, "train_loss": result.metrics["train_loss"],
                      "steps": result.metrics["steps"]}))


def checkpoint_bytes_per_rank(files: dict[str, int]) -> list[int]:
    """Bytes each rank wrote: a sharded checkpoint's ``__<rank>_*.distcp`` files (rank 0 also its metadata
    and loop state); a full checkpoint is all rank 0's."""
    shards = {name: size for name, size in files.items() if name.endswith(".distcp")}
    if not shards:
        return [sum(files.values()), 0]
    per_rank = [0, 0]
    for name, size in shards.items():
        per_rank[int(name.split("_")[2])] += size
    per_rank[0] += sum(size for name, size in files.items() if name not in shards)
    return per_rank


def run_side(tree: str, args: argparse.Namespace, work: str) -> dict:
    env = {**os.environ, "PYTHONPATH": tree, "RAY_DEDUP_LOGS": "0", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", "--model", args.model, "--work", work,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-seq-len", str(args.max_seq_len)]
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"side {tree} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default=BASELINE, help="git revision of the old side")
    ap.add_argument("--model", help="a save_pretrained student (default: the smollm2-135m preset, built once)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-seq-len", type=int, default=128)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--side", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        return side(args)

    work = tempfile.mkdtemp(prefix="rd-bench-train-memory-")
    if args.model is None:
        from ray_distill.presets import build_preset

        args.model = build_preset("smollm2-135m", os.path.join(work, "storage"))
    old_tree = os.path.join(work, "old-src")
    os.makedirs(old_tree)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", old_tree], input=archive.stdout, check=True)
    figures = {name: run_side(tree, args, os.path.join(work, name))
               for name, tree in (("old", old_tree), ("new", str(ROOT)))}
    print(f"SmolLM2-135M, 2 FSDP workers (CPU, fp32), {args.steps} steps of batch {args.batch_size} x "
          f"{args.max_seq_len} tokens; old = {args.baseline}")
    print(f"{'':<8}{'floor MB':>10}{'peak MB':>10}{'old peak':>10}{'ratio':>8}{'above floor':>13}{'old':>8}"
          f"{'ratio':>8}")
    for r in range(2):
        old, new = figures["old"]["ranks"][r], figures["new"]["ranks"][r]
        above_new, above_old = new["peak_mb"] - new["floor_mb"], old["peak_mb"] - old["floor_mb"]
        print(f"rank {r:<3}{new['floor_mb']:>10.0f}{new['peak_mb']:>10.0f}{old['peak_mb']:>10.0f}"
              f"{new['peak_mb'] / old['peak_mb']:>8.2f}{above_new:>13.0f}{above_old:>8.0f}"
              f"{above_new / above_old:>8.2f}")
    old_bytes = checkpoint_bytes_per_rank(figures["old"]["checkpoint_files"])
    new_bytes = checkpoint_bytes_per_rank(figures["new"]["checkpoint_files"])
    print(f"checkpoint bytes per rank: old {old_bytes}, new {new_bytes}; "
          f"largest new rank / old rank 0 = {max(new_bytes) / old_bytes[0]:.3f} (1/world = 0.5)")
    print(f"train loss: old {figures['old']['train_loss']:.4f}, new {figures['new']['train_loss']:.4f}")


if __name__ == "__main__":
    main()
