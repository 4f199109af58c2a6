"""Teacher-token economy: the paper's order vs compress-first with adaptive sampling, side by side.

    .venv/bin/python benchmarks/token_economy.py                 # both arms on the quickstart world
    .venv/bin/python benchmarks/token_economy.py --arms paper compress_first adaptive --m 8 --p 2

Every arm runs the whole job (``pipeline.run_job``) on the same question pool, the same student, the
same P and the same training recipe, with the concise scripted teacher and the smoke test off (one
candidate). Arms differ only in how teacher samples are spent:

- ``paper``: sample M solutions for every question, then compress (drop what the student solves);
- ``compress_first``: compress, then sample M for the kept questions only;
- ``adaptive``: compress, then sample kept questions in rounds, stopping each at P + 2 distinct correct
  (``selection.adaptive.enough_margin``) among at least ``selection.adaptive.min_samples`` (default 2P) samples.

Each arm gets its own teacher name, so its own generation-store directory: nothing is shared between
arms except the cached base student. Printed per arm: teacher tokens (probe + M-sample generation),
kept corpus samples, teacher tokens per kept sample and its ratio to ``paper``, what selection had to choose
from (the mean number of distinct verified-correct candidates per kept question) and what it kept (the mean
pairwise token Levenshtein distance of each question's kept rows), and the student's in-domain avg@k after
training with its 95% CI.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = {
    "paper": {"compression": {"order": "paper"}, "selection": {"adaptive": {"enabled": False}}},
    "compress_first": {"compression": {"order": "compress_first"}, "selection": {"adaptive": {"enabled": False}}},
    "adaptive": {"compression": {"order": "compress_first"}, "selection": {"adaptive": {"enabled": True}}},
}


def merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def arm_config(job: dict, arm: str, storage: str, m: int, p: int):
    from ray_distill.config import config_from_dict

    teacher = next(t for t in job["teachers"] if t["name"] == "concise")
    tree = merge(job, ARMS[arm])
    tree.update({"name": f"token-economy-{arm}", "storage": storage,
                 "teachers": [{**teacher, "name": f"concise-{arm}"}]})
    tree["smoke_test"] = {**tree.get("smoke_test", {}), "enabled": False, "probe_questions": 50}
    tree["selection"] = {**tree["selection"], "samples_per_question": m, "keep_per_question": p}
    return config_from_dict(tree, source=f"token_economy[{arm}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", default=str(ROOT / "jobs/quickstart.yaml"))
    ap.add_argument("--storage", default=str(ROOT / "outputs/benchmarks"))
    ap.add_argument("--arms", nargs="+", default=["paper", "adaptive"], choices=list(ARMS))
    ap.add_argument("--m", type=int, default=8, help="M: samples per question (at most, adaptive)")
    ap.add_argument("--p", type=int, default=2, help="P: trajectories kept per question")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

    from ray_distill.evaluation.stage import in_domain_score
    from ray_distill.pipeline import run_job
    from ray_distill.tracking import NullTracker

    job = yaml.safe_load(Path(args.job).read_text())
    results = {}
    for arm in args.arms:
        cfg = arm_config(job, arm, args.storage, args.m, args.p)
        t0 = time.perf_counter()
        res = run_job(cfg, NullTracker())
        acc = res.extra["accounting"]
        teacher = sum(r["teacher_tokens"] for r in acc)
        generation = sum(r["teacher_tokens"] for r in acc if r["stage"] == "generate")
        suite = next(s.name for s in cfg.eval.suites if s.domain == "in_domain")
        after = res.scores_after[suite]
        results[arm] = {
            "teacher_tokens": teacher, "generation_tokens": generation, "kept": res.rows["diverse"],
            "questions": res.rows.get("compressed", 0), "score": in_domain_score(cfg, res.scores_after),
            "ci": (after["ci_low"], after["ci_high"]), "wall_s": time.perf_counter() - t0,
        }
        results[arm].update(choice(cfg.run_dir))
        print(f"[{arm}] {results[arm]}", flush=True)

    base = results.get("paper")
    print(f"\nteacher-token economy (M={args.m}, P={args.p}, concise teacher, {job['name']} pool)")
    print(f"{'arm':16s} {'teacher tok':>12s} {'of which M-gen':>14s} {'kept':>6s} {'tok/kept':>9s} "
          f"{'ratio':>6s} {'candidates/q':>12s} {'kept dist':>9s} {'avg@k after [95% CI]':>24s} {'wall s':>7s}")
    for arm, r in results.items():
        per = r["teacher_tokens"] / r["kept"] if r["kept"] else float("nan")
        ratio = per / (base["teacher_tokens"] / base["kept"]) if base and base["kept"] else float("nan")
        print(f"{arm:16s} {r['teacher_tokens']:12,d} {r['generation_tokens']:14,d} {r['kept']:6d} {per:9.1f} "
              f"{ratio:6.3f} {r['candidates_per_question']:12.2f} {r['kept_distance']:9.1f} "
              f"{r['score']:8.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] {r['wall_s']:7.0f}")


def choice(run_dir: str) -> dict:
    """What selection had to choose from and what it kept, from the run's graded and selected rows: the mean number
    of distinct verified-correct candidates per kept question, and the mean (over kept questions with two or more
    rows) of the mean pairwise token Levenshtein distance of the kept rows."""
    from ray_distill import columns as C
    from ray_distill.curation.adaptive import distinct_correct
    from ray_distill.curation.plane import read_parquet_dir
    from ray_distill.curation.selection import distance_report
    from ray_distill.data.fs import join

    work = join(run_dir, "data", "generate")
    graded, selected = read_parquet_dir(join(work, "graded")), read_parquet_dir(join(work, "selected"))
    kept = selected[C.QUESTION_ID].astype(str).unique()
    candidates = distinct_correct(graded).reindex(kept, fill_value=0)
    return {"candidates_per_question": float(candidates.mean()) if len(kept) else float("nan"),
            "kept_distance": distance_report(selected)["mean_distance_selected"]}


if __name__ == "__main__":
    main()
