"""Long-lived engines (``generation.hosts``) vs a fresh engine actor pool per model, side by side in one run: the
student's evaluation samples ``--models`` different checkpoints one after the other (what a job does across the
smoke test's candidates, compression's base student, and the base and trained student at evaluation).

    python benchmarks/engine_hosts.py                 # 3 random micro students, 40 questions x 2 samples each
    python benchmarks/engine_hosts.py --models 4 --questions 100

Both ways run in one local cluster of 2 CPUs, the fresh pools first (``student.serving.long_lived: false``), then
the same models on one host inside ``keep_engines`` (each model after the first swapped in place). Prints the
seconds per model (engine start included) and the ratio of the totals; the samples of both ways are compared
(they must be equal: the engine and the requests are the same).
2026-12-06, 2 CPUs, 3 models x 40 questions x 2: fresh pools 12.8 / 11.8 / 12.0 s, one host 12.2 / 4.9 / 4.8 s;
totals 36.6 vs 21.8 s (1.68x); the samples equal.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--questions", type=int, default=40)
    args = parser.parse_args()

    import ray

    from ray_distill.config import StudentConfig
    from ray_distill.evaluation.evaluate import sample_student
    from ray_distill.generation.hosts import keep_engines
    from ray_distill.synthetic.student import save_random_student
    from ray_distill.synthetic.tasks import make_questions

    logging.basicConfig(level=logging.WARNING)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    questions = make_questions("arith", args.questions, 1, 3, seed=5)
    with tempfile.TemporaryDirectory() as tmp:
        models = [save_random_student("micro", f"{tmp}/m{i}", seed=i) for i in range(args.models)]

        def run(long_lived: bool) -> tuple[list[float], list[list[str]]]:
            student = StudentConfig(serving={"long_lived": long_lived})
            seconds, texts = [], []
            for m in models:
                start = time.perf_counter()
                df = sample_student(questions, m, 2, 1.0, 16, seed=1, student=student)
                seconds.append(time.perf_counter() - start)
                texts.append(df["completion"].tolist())
            return seconds, texts

        fresh, fresh_texts = run(False)
        with keep_engines():
            hosted, hosted_texts = run(True)
    print(f"{args.models} models x {args.questions} questions x 2 samples, seconds per model (engine start included)")
    print("fresh pool per model:", " / ".join(f"{s:.1f}" for s in fresh), f"total {sum(fresh):.1f} s")
    print("one long-lived host: ", " / ".join(f"{s:.1f}" for s in hosted), f"total {sum(hosted):.1f} s")
    print(f"ratio {sum(fresh) / sum(hosted):.2f}x; samples equal: {fresh_texts == hosted_texts}")


if __name__ == "__main__":
    main()
