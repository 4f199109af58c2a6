"""Evaluating several students (a smoke test's candidates): one after the other vs ``evaluation.stage.evaluate_all``
(all sampled at once, one vLLM engine actor each), side by side on the same students and suite.

    python benchmarks/concurrent_eval.py                      # 3 random 'tiny' students, 150 questions x k=4
    python benchmarks/concurrent_eval.py --students 2 --questions 300

Each evaluation is mostly fixed cost on a CPU machine: the engine actor's process start, the vLLM import and
the engine build (~15 s here) against ~2 s of sampling; run concurrently, those start-ups overlap. Every
run samples afresh (a new store root each time). Wall seconds of each way, alternated ``--repeats`` times;
the best of each is compared, and both ways must give the same scores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from ray_distill.config import config_from_dict
from ray_distill.synthetic.student import save_random_student
from ray_distill.synthetic.tasks import make_questions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--students", type=int, default=3)
    ap.add_argument("--questions", type=int, default=150)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="runs per way; the best of each is compared")
    args = ap.parse_args()

    from ray_distill.evaluation import stage as E
    from ray_distill.runtime import init_ray
    from ray_distill.tracking import NullTracker

    work = tempfile.mkdtemp(prefix="rd-bench-eval-")
    models = [save_random_student("tiny", os.path.join(work, f"student{i}"), seed=i) for i in range(args.students)]
    suites = {"dev": make_questions("arith", args.questions, 1, 3, seed=104)}

    def cfg(root: str):
        return config_from_dict({"storage": root, "questions": {"synthetic": {"num_questions": 10}},
                                 "teachers": [{"name": "t", "engine": {"kind": "scripted", "persona": "concise"}}],
                                 "eval": {"k": args.k, "temperature": 0.5, "max_tokens": 64}})

    init_ray(cfg(work))
    print(f"{args.students} students x {args.questions} questions x k={args.k}")
    walls: dict[str, list[float]] = {"one after the other": [], "evaluate_all": []}
    for r in range(args.repeats):
        c = cfg(os.path.join(work, f"seq{r}"))
        t0 = time.perf_counter()
        seq = [E.evaluate(c, m, suites, NullTracker(), prefix="x") for m in models]
        walls["one after the other"].append(time.perf_counter() - t0)
        c = cfg(os.path.join(work, f"all{r}"))
        t0 = time.perf_counter()
        together = E.evaluate_all(c, [(m, NullTracker(), "x") for m in models], suites)
        walls["evaluate_all"].append(time.perf_counter() - t0)
        assert together == seq, "concurrent evaluation changed a score"
    seq_best, all_best = min(walls["one after the other"]), min(walls["evaluate_all"])
    print(f"{'way':<22}{'best wall s':>12}{'all runs':>20}")
    for name, ws in walls.items():
        print(f"{name:<22}{min(ws):>12.1f}{'  '.join(f'{w:.1f}' for w in ws):>20}")
    print(f"evaluate_all / one after the other: {all_best / seq_best:.2f} (saved {seq_best - all_best:.1f} s)")


if __name__ == "__main__":
    main()
