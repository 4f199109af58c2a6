"""Training throughput: a plain single-process PyTorch loop vs Ray Train with one worker, padded
(length-bucketed) vs packed rows.

    python benchmarks/training.py                        # 'tiny' student, 800 rows, 1 epoch, batch 32
    python benchmarks/training.py --rows 2000 --preset micro --threads 2

Both sides train the same randomly initialised student (saved once with save_pretrained) on the same
encoded rows, the same batch plan and the same number of optimiser steps, with the same number of
torch threads. Tokens/s counts non-pad tokens over the seconds spent inside optimiser steps (startup,
logging and checkpoints excluded on both sides). The rows are teacher solutions of 1-6-step questions
(mixed lengths), so padding matters. Each side runs ``--repeats`` times, alternating, and the best
(highest tokens/s) run of each is compared: on a shared, loaded machine single runs are noise.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from ray_distill.columns import MESSAGES, QUESTION
from ray_distill.config import TrainConfig
from ray_distill.synthetic.student import save_random_student
from ray_distill.synthetic.tasks import make_questions
from ray_distill.synthetic.teachers import write_solution
from ray_distill.models import load_tokenizer
from ray_distill.training.data import (collate, encode_example, layout, non_pad_fraction, padded_size,
                                      supervised_count)
from ray_distill.training.loop import build_optimizer, epoch_plan, token_loss_sum


def corpus(n: int) -> list[dict]:
    qs = make_questions("arith", n, 1, 6, seed=0)
    return [{MESSAGES: [{"role": "user", "content": q[QUESTION]},
                        {"role": "assistant", "content": write_solution("verbose", q[QUESTION], 0)}]} for q in qs]


def plain_loop(examples: list[dict], model_dir: str, cfg: TrainConfig) -> dict:
    """Single process, no Ray, no torch.distributed: the reference."""
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(int(cfg.cpus_per_worker))
    torch.manual_seed(cfg.seed)
    from ray_distill.training.shard import LossModel

    model = LossModel(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), cfg.loss_chunk_tokens)
    model.train()
    lengths = [len(e["input_ids"]) for e in examples]
    plan = epoch_plan(lengths, cfg, 1, 0)
    optimizer, scheduler = build_optimizer(model, cfg, len(plan))
    tokens, step_s, real, padded, loss_sum, sup_sum = 0, 0.0, 0, 0, 0.0, 0
    for batch in plan:
        t0 = time.perf_counter()
        rows = layout(lengths, batch, cfg.packing, cfg.max_seq_len)
        inputs = collate([[examples[i] for i in row] for row in rows], pad_id=0)
        sup = sum(supervised_count(examples[i]) for i in batch)
        loss = token_loss_sum(model, inputs)
        optimizer.zero_grad(set_to_none=True)
        (loss / sup).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item()
        step_s += time.perf_counter() - t0
        tokens += sum(lengths[i] for i in batch)
        real, padded, sup_sum = real + sum(lengths[i] for i in batch), padded + padded_size(lengths, rows), sup_sum + sup
    return {"tokens_per_s": tokens / step_s, "steps": len(plan), "train_loss": loss_sum / sup_sum,
            "non_pad_fraction": real / padded}


def ray_train(rows: list[dict], model_dir: str, cfg: TrainConfig, work: str, name: str) -> dict:
    from ray_distill.training import train_sft

    result = train_sft(rows, model_dir, os.path.join(work, f"student-{name}"), cfg,
                       storage_path=os.path.join(work, "ray"), run_name=name)
    return result.metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--rows", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="runs per side; the best of each is compared")
    args = ap.parse_args()

    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False, configure_logging=False)
    work = tempfile.mkdtemp(prefix="rd-bench-train-")
    model_dir = save_random_student(args.preset, os.path.join(work, "base"))
    rows = corpus(args.rows)
    base = TrainConfig(num_workers=1, cpus_per_worker=args.threads, epochs=1, batch_size=args.batch_size,
                       max_seq_len=args.max_seq_len, max_failures=0)
    tokenizer = load_tokenizer(model_dir)  # the plain loop's examples; Ray Train's are tokenized in Ray Data
    examples = [encode_example(tokenizer, r[MESSAGES], args.max_seq_len) for r in rows]
    lengths = [len(e["input_ids"]) for e in examples]
    print(f"{args.rows} rows, {sum(lengths)} tokens, lengths {min(lengths)}..{max(lengths)}, "
          f"preset {args.preset}, batch {args.batch_size}, {args.threads} threads")
    print(f"{'layout':<10}{'plain tok/s':>13}{'ray tok/s':>12}{'ray/plain':>11}{'non-pad':>9}{'steps':>7}"
          f"{'plain loss':>12}{'ray loss':>10}")
    for packing in (False, True):
        cfg = base.model_copy(update={"packing": packing})
        plan = epoch_plan(lengths, cfg, 1, 0)
        npf = non_pad_fraction(lengths, [layout(lengths, b, packing, cfg.max_seq_len) for b in plan])
        plains, rays = [], []
        for r in range(args.repeats):
            plains.append(plain_loop(examples, model_dir, cfg))
            rays.append(ray_train(rows, model_dir, cfg, work, f"{'packed' if packing else 'padded'}-{r}"))
        plain = max(plains, key=lambda m: m["tokens_per_s"])
        ray_m = max(rays, key=lambda m: m["tokens_per_s"])
        assert plain["steps"] == ray_m["steps"], (plain["steps"], ray_m["steps"])
        print(f"{'packed' if packing else 'padded':<10}{plain['tokens_per_s']:>13.0f}{ray_m['tokens_per_s']:>12.0f}"
              f"{ray_m['tokens_per_s'] / plain['tokens_per_s']:>11.2f}{npf:>9.3f}{plain['steps']:>7}"
              f"{plain['train_loss']:>12.4f}{ray_m['train_loss']:>10.4f}")
        assert abs(ray_m["non_pad_fraction"] - npf) < 1e-9  # the loop measures what the plan predicts
    ray.shutdown()


if __name__ == "__main__":
    main()
