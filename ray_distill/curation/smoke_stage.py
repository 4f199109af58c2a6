"""The teacher smoke test as a job runs it: per candidate, a short SFT of the base student on its verified probe
answers (one Ray Train launch for all), scored on the dev suite; the ranking rules are the pure
:mod:`ray_distill.curation.smoke_test`.

    ranking = smoke_test(cfg, {teacher: graded probe rows}, dev, base, tracker)   # best first, with reasons
"""

from __future__ import annotations

import contextlib
import logging

import pandas as pd
import ray

from ray_distill import columns as C
from ray_distill.config import JobConfig
from ray_distill.curation.adaptive import ok_mask
from ray_distill.curation.smoke_test import (STUDENT_SCORE, TEACHER_ACCURACY, below_floor_reason, rank_teachers,
                                             top_two_note, training_questions, verified_floor)
from ray_distill.curation.stats import token_entropies_under_model
from ray_distill.data.corpus import to_chat_row
from ray_distill.data.fs import join
from ray_distill.data.stage import Suites
from ray_distill.evaluation.metrics import wilson_interval
from ray_distill.evaluation.stage import evaluate_all
from ray_distill.progress import StageRecord
from ray_distill.tracking import Tracker
from ray_distill.tracking.charts import bar_chart
from ray_distill.training.sft import SFTJob, train_sft_many

logger = logging.getLogger(__name__)


def smoke_test(cfg: JobConfig, probe: dict[str, pd.DataFrame], dev: Suites, base: str,
               t: Tracker, rec: StageRecord | None = None) -> list[dict]:
    """Teacher selection (``curation.smoke_test``): per candidate, a short SFT of the student on the same
    number of its verified probe answers (shared questions first), scored on the dev suite; a teacher
    without a verified probe row ranks last with its reason. With ``smoke_test.enabled: false`` the
    teachers' own probe accuracy ranks them instead, and the table says so (``ranked_by``).

    Every candidate's SFT runs in one Ray Train launch and every corpus entropy in one Ray task: their
    start-ups (the worker group's ~20 s, the base student's load) are paid once, not once per teacher."""
    s = cfg.smoke_test
    by = STUDENT_SCORE if s.enabled else TEACHER_ACCURACY
    verified = {name: graded[ok_mask(graded)] for name, graded in probe.items()}
    n_probe = max((int(g[C.QUESTION_ID].nunique()) for g in probe.values()), default=0)
    floor = verified_floor(n_probe, s.min_verified) if s.enabled else 1  # ranked by accuracy: no training to starve
    picks = training_questions({n: ok[C.QUESTION_ID].astype(str) for n, ok in verified.items()}, seed=cfg.seed,
                               floor=floor)
    shared = set.intersection(*(set(p) for p in picks.values() if p)) if any(picks.values()) else set()
    entropy = student_entropy(cfg, base, {name: (ok[C.COMPLETION].tolist(), ok[C.PROMPT].tolist())
                                          for name, ok in verified.items() if len(ok)})
    results, per_question, to_train = [], {}, {}
    with contextlib.ExitStack() as stack:
        children = {name: stack.enter_context(t.child(f"teacher/{name}", tags={"ray_distill.teacher": name}))
                    for name in probe}
        for name, graded in probe.items():
            ok = verified[name]
            train = ok[ok[C.QUESTION_ID].astype(str).isin(picks[name])]
            res = {"teacher": name, STUDENT_SCORE: float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                   TEACHER_ACCURACY: float(graded[C.CORRECT].mean()), "verified_rows": len(ok),
                   "probe_questions": int(graded[C.QUESTION_ID].nunique()),
                   "train_rows": len(train) if s.enabled else 0, "shared_questions": len(shared) if s.enabled else 0,
                   "mean_length": float(graded[C.NUM_TOKENS].mean()), "entropy": entropy.get(name, float("nan")),
                   "reason": below_floor_reason(len(ok), floor)}
            if res["reason"]:
                children[name].set_tags({"reason": res["reason"]})
                logger.warning("smoke test: %s ranks last: %s (floor: smoke_test.min_verified=%g of %d probe "
                               "questions)", name, res["reason"], s.min_verified, res["probe_questions"])
            elif s.enabled:
                to_train[name] = train
            else:  # ranked by the teacher's own accuracy: its CI and paired margins over the probe questions
                per_question[name] = graded.groupby(C.QUESTION_ID)[C.CORRECT].mean().astype(float).to_dict()
                res["ci_low"], res["ci_high"] = wilson_interval(res[TEACHER_ACCURACY], max(1, len(per_question[name])))
            results.append(res)
        scores = smoke_student_scores(cfg, to_train, dev, base, children, rec) if to_train else {}
        for res in results:
            if res["teacher"] in scores:
                m = scores[res["teacher"]]
                res.update({STUDENT_SCORE: m["avg_at_k"], "ci_low": m["ci_low"], "ci_high": m["ci_high"]})
                per_question[res["teacher"]] = m["question_rates"]
            children[res["teacher"]].log_metrics({k: v for k, v in res.items() if isinstance(v, float | int)})
    trained = {r["train_rows"] for r in results if r["train_rows"]}
    if len(trained) > 1:
        raise RuntimeError(f"smoke test: candidates trained on unequal row counts {sorted(trained)}")
    ranking = rank_teachers(results, by=by, per_question=per_question)
    note = top_two_note(ranking)
    logger.info("smoke test: %s", note)
    first = ranking[0]
    if first["separable"] is not None:
        t.log_metrics({"top_two/margin": first["margin"], "top_two/margin_ci_low": first["margin_ci_low"],
                       "top_two/margin_ci_high": first["margin_ci_high"], "top_two/separable": float(first["separable"])})
    t.set_tags({"ray_distill.top_two": note, "ray_distill.ranked_by": by})
    table = pd.DataFrame(ranking)
    t.log_table(table, "teacher_ranking.json")
    title = f"student avg@k on {cfg.dev.name} after smoke-test SFT" if s.enabled else "teacher's own probe accuracy"
    t.log_figure(bar_chart(table, "teacher", by, title), "teacher_ranking.png")
    return ranking


def student_entropy(cfg: JobConfig, base: str, corpora: dict[str, tuple[list[str], list[str]]]) -> dict[str, float]:
    """``token_entropies_under_model`` of the base student over each teacher's (texts, prompts), run as one Ray
    task on the student's serving resources, not in the driver (on GPUs the model is loaded in 16-bit and spread
    over all of them: ``curation.stats.entropy_load_plan``); {} without a corpus."""
    if not corpora:
        return {}
    r = cfg.student.serving.resources
    task = ray.remote(num_cpus=r.num_cpus, num_gpus=r.num_gpus,
                      resources=dict(r.custom_resources) or None)(token_entropies_under_model)
    return ray.get(task.remote(base, corpora, chat_template=cfg.student.chat_template))


def smoke_student_scores(cfg: JobConfig, train: dict[str, pd.DataFrame], dev: Suites, base: str,
                         trackers: dict[str, Tracker], rec: StageRecord | None) -> dict[str, dict]:
    """Short SFTs of the base student on each teacher's smoke-test rows (one Ray Train launch for all), then
    each student's scores on the dev suite; per teacher, logged to its ``trackers`` run."""
    s = cfg.smoke_test
    train_cfg = cfg.train.model_copy(update={"epochs": s.epochs, "lr": s.lr, "batch_size": s.batch_size})
    jobs = [SFTJob([to_chat_row(r) for r in rows.to_dict("records")], join(cfg.run_dir, "smoke", name),
                   trackers[name].handle()) for name, rows in train.items()]
    trained = train_sft_many(jobs, base, train_cfg, storage_path=join(cfg.run_dir, "ray_train"), run_name="smoke",
                             log_model=False, chat_template=cfg.student.chat_template)
    scores = evaluate_all(cfg, [(r.model_path, trackers[name], "smoke") for name, r in zip(train, trained)], dev, rec)
    return {name: by_suite[cfg.dev.name] for name, by_suite in zip(train, scores)}
