"""The paper's ablation in miniature: which DED move buys what, at an equal training budget.

    ray-distill ablate jobs/ablation.yaml

Arms (every corpus has the same number of rows N and is trained with the same recipe, so the same
number of optimizer steps; N is the size of the full DED corpus unless ``ablation.budget_rows`` is set):

- ``random``: N teacher samples drawn at random (no verification, no compression, no diversity);
- ``+correct``: N random verified-correct samples;
- ``+correct+compressed``: N random verified-correct samples of the questions compression keeps;
- ``+correct+compressed+diverse``: the DED corpus (farthest-P selection on the kept questions);
- ``DED, best-accuracy teacher``: the same DED recipe on the teacher with the best *own* accuracy
  (instead of the smoke-test winner, chosen on the dev suite), cut to N rows.

Every arm runs once per seed of ``ablation.seeds`` (the seed draws the arm's rows and orders its
training, ``train.seed``), each a nested MLflow run. The per-seed table (score and 95% CI over
questions per suite) is logged as ``ablation.json``, the summary over seeds (mean, standard deviation,
range) as ``ablation_summary.json`` and a bar chart (mean, error bars: the spread over seeds, or the
CI with one seed) as ``ablation.png``; the CLI prints the summary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from ray_distill import columns as C
from ray_distill.config import JobConfig
from ray_distill.curation.adaptive import ok_mask
from ray_distill.curation.smoke_test import winner
from ray_distill.data.corpus import to_chat_row
from ray_distill.data.fs import join
from ray_distill.progress import StageRunner
from ray_distill.tracking import Tracker

logger = logging.getLogger(__name__)

RANDOM, CORRECT, COMPRESSED, DIVERSE, OTHER_TEACHER = (
    "random", "+correct", "+correct+compressed", "+correct+compressed+diverse", "DED, best-accuracy teacher")


@dataclass
class AblationResult:
    table: pd.DataFrame  # one row per arm x seed x suite: arm, teacher, rows, seed, suite, avg_at_k, ci_low, ci_high
    summary: pd.DataFrame  # one row per arm x suite (:func:`summarize`)
    winner: str  # the smoke-test winner
    best_accuracy_teacher: str
    budget_rows: int


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per arm and suite, over seeds: ``mean``, ``sd`` (sample standard deviation, 0 with one seed),
    ``min``, ``max``, ``seeds``, and the mean 95% CI bounds over questions (``ci_low``, ``ci_high``).
    Arms and suites keep their order in ``table`` (pure)."""
    keys = ["arm", "teacher", "rows", "suite"]
    g = table.groupby(keys, sort=False)
    out = g["avg_at_k"].agg(mean="mean", sd="std", min="min", max="max", seeds="count")
    out["sd"] = out["sd"].fillna(0.0)
    out[["ci_low", "ci_high"]] = g[["ci_low", "ci_high"]].mean()
    return out.reset_index()


def ablation_corpora(graded: pd.DataFrame, kept_ids: set[str], diverse: pd.DataFrame, n: int,
                     seed: int) -> dict[str, pd.DataFrame]:
    """The four selection arms of one teacher's graded M samples, each cut to ``n`` rows (pure)."""
    ok = ok_mask(graded)
    pools = {
        RANDOM: graded,
        CORRECT: graded[ok],
        COMPRESSED: graded[ok & graded[C.QUESTION_ID].isin(kept_ids)],
        DIVERSE: diverse,
    }
    out = {}
    for arm, pool in pools.items():
        if len(pool) < n:
            raise ValueError(f"ablation arm {arm!r} has {len(pool)} rows, fewer than the budget of {n}")
        out[arm] = pool.sample(n=n, random_state=seed).sort_values([C.QUESTION_ID, C.SAMPLE_INDEX])
    return out


def best_accuracy_teacher(ranking: list[dict]) -> str:
    """The candidate whose own answers are most often right (ties: the smoke-test order)."""
    return max(ranking, key=lambda r: (r["teacher_accuracy"], -r["rank"]))["teacher"]


def run_ablation(cfg: JobConfig, tracker: Tracker, runner: StageRunner) -> AblationResult:
    from ray_distill import pipeline as P
    from ray_distill.generation.store import GenerationStore
    from ray_distill.runtime import init_ray
    from ray_distill.training.sft import train_sft

    init_ray(cfg)
    cfg = P.resolve_models(cfg)
    store = GenerationStore(join(cfg.storage, "generations"))
    base, pool, suites, dev = P.student_and_questions(cfg, runner)
    with runner.stage("smoke_test") as (t, rec):
        probe = pool[: cfg.smoke_test.probe_questions]
        if cfg.budget.max_teacher_tokens is not None:
            P.check_budget(cfg, [P.estimate_generation(store, "generate_probe", probe, P._single(tc))
                                 for tc in cfg.teachers], 0)
        probe_gen = pd.concat([P.generate(store, probe, P._single(tc), t, rec) for tc in cfg.teachers], ignore_index=True)
        graded_probe = P.verify(cfg, probe_gen, base, t, rec)
        ranking = P.smoke_test(cfg, {tc.name: graded_probe[graded_probe[C.TEACHER] == tc.name] for tc in cfg.teachers},
                               dev, base, t, rec)
        best, accurate = winner(ranking), best_accuracy_teacher(ranking)
        rec.notes.update({"winner": best, "best_accuracy": accurate})
    with runner.stage("compress", rows_in=len(pool)) as (t, rec):
        kept, _ = P.compress_questions(cfg, pool, base, t, rec)  # the job's compression, rejects and all
        kept_ids = {q[C.QUESTION_ID] for q in kept}
        rec.rows_out = len(kept)
    graded_by: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}  # teacher -> (graded M samples, DED corpus)
    for name in dict.fromkeys([best, accurate]):
        with runner.stage(f"generate/{name}", rows_in=len(pool)) as (t, rec):
            teacher = P._with_n(next(tc for tc in cfg.teachers if tc.name == name), cfg.selection.samples_per_question)
            if cfg.budget.max_teacher_tokens is not None:
                P.check_budget(cfg, [P.estimate_generation(store, f"generate/{name}", pool, teacher)],
                               runner.totals()["teacher_tokens"] + rec.teacher_tokens)
            graded = P.verify(cfg, P.generate(store, pool, teacher, t, rec), base, t, rec)
            graded_by[name] = graded, P.select(cfg, graded[graded[C.QUESTION_ID].isin(kept_ids)], base)
            rec.rows_out = len(graded_by[name][1])
    n = cfg.ablation.budget_rows or len(graded_by[best][1])
    rows = []
    for seed in cfg.ablation.seeds:
        graded, diverse = graded_by[best]
        corpora = {arm: (best, df) for arm, df in ablation_corpora(graded, kept_ids, diverse, n, seed).items()}
        if accurate != best:
            other = graded_by[accurate][1]
            corpora[OTHER_TEACHER] = (accurate, other.sample(n=min(n, len(other)), random_state=seed))
        for arm, (teacher_name, df) in corpora.items():
            with runner.stage(f"arm/{arm}/seed{seed}", rows_in=len(df)) as (t, rec):
                corpus = [to_chat_row(r) for r in df.to_dict("records")]
                slug = f"{arm.replace('+', 'plus_').replace(',', '').replace(' ', '_')}-seed{seed}"
                trained = train_sft(corpus, base, join(cfg.run_dir, "ablation", slug),
                                    cfg.train.model_copy(update={"seed": seed}),
                                    storage_path=join(cfg.run_dir, "ray_train"), run_name=f"ablation-{slug}",
                                    tracker_handle=t.handle(), log_model=False,
                                    chat_template=cfg.student.chat_template)
                scores = P.evaluate(cfg, trained.model_path, suites, t, prefix="after", rec=rec)
                t.log_params({"arm": arm, "teacher": teacher_name, "rows": len(corpus), "seed": seed})
                for suite, m in scores.items():
                    rows.append({"arm": arm, "teacher": teacher_name, "rows": len(corpus), "seed": seed,
                                 "suite": suite, "avg_at_k": m["avg_at_k"], "ci_low": m["ci_low"],
                                 "ci_high": m["ci_high"]})
    table = pd.DataFrame(rows)
    summary = summarize(table)
    tracker.log_table(table, "ablation.json")
    tracker.log_table(summary, "ablation_summary.json")
    tracker.log_figure(_chart(table, summary), "ablation.png")
    return AblationResult(table=table, summary=summary, winner=best, best_accuracy_teacher=accurate, budget_rows=n)


def _chart(table: pd.DataFrame, summary: pd.DataFrame):
    """Per suite: the mean over seeds per arm as a bar, each seed as a dot; error bars are the standard
    deviation over seeds (with one seed: the 95% CI over questions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suites = list(dict.fromkeys(summary["suite"]))
    one_seed = bool((summary["seeds"] == 1).all())
    fig, axes = plt.subplots(1, len(suites), figsize=(5 * len(suites), 3.8), squeeze=False)
    for ax, suite in zip(axes[0], suites):
        sub = summary[summary["suite"] == suite].reset_index(drop=True)
        err = [sub["mean"] - sub["ci_low"], sub["ci_high"] - sub["mean"]] if one_seed else sub["sd"]
        ax.bar(range(len(sub)), sub["mean"], yerr=err, capsize=4, alpha=0.7)
        for x, arm in enumerate(sub["arm"]):
            seeds = table[(table["suite"] == suite) & (table["arm"] == arm)]["avg_at_k"]
            ax.plot([x] * len(seeds), seeds, "k.", markersize=4)
        ax.set_xticks(range(len(sub)), sub["arm"], rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{suite}: avg@k, " + ("95% CI" if one_seed else f"mean ± sd over {int(sub['seeds'].max())} seeds"))
    fig.tight_layout()
    plt.close(fig)
    return fig
