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

The data-efficiency curve (``ablation.curve``, the paper's headline): DED at N rows (the DED corpus cut to
N) against random verified-correct rows at k x N for each k of ``ablation.curve.multiples``. Every curve
arm takes **the same number of optimizer steps**: the k x N arm trains ``train.epochs / k`` epochs, so the
larger arms see more distinct rows, not more updates (the question is what a row is worth, not what
more compute buys). The per-move arms are skipped with ``ablation.moves: false``; when they run, the
curve reuses their ``+correct`` (k = 1) and DED trainings, which are the same corpora and recipe.
The summary over seeds adds a 95% t-interval of the mean (``seed_ci_low``/``seed_ci_high``); the curve
is plotted as score vs rows on a log axis (``ablation_curve.png``, ``ablation_curve.json``).

Every arm runs once per seed of ``ablation.seeds`` (the seed draws the arm's rows and orders its
training, ``train.seed``), each a nested MLflow run. The per-seed table (score and 95% CI over
questions per suite) is logged as ``ablation.json``, the summary over seeds (mean, standard deviation,
range) as ``ablation_summary.json`` and a bar chart (mean, error bars: the spread over seeds, or the
CI with one seed) as ``ablation.png``; the CLI prints the summary. DED is compared with every other arm
**paired by seed** (both arms of a seed train with the same ``train.seed``): the per-seed differences as
``ablation_paired_seeds.json``, their mean with the paired 95% t-interval as ``ablation_paired.json``
(:func:`paired_summary`), printed in the closing table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from ray_distill import columns as C
from ray_distill.config import ConfigError, JobConfig, check_curve_multiples
from ray_distill.curation.adaptive import ok_mask
from ray_distill.curation.smoke_test import winner
from ray_distill.data.corpus import to_chat_row
from ray_distill.data.dev import probe_questions
from ray_distill.data.fs import join
from ray_distill.progress import StageRunner
from ray_distill.tracking import Tracker

logger = logging.getLogger(__name__)

RANDOM, CORRECT, COMPRESSED, DIVERSE, OTHER_TEACHER = (
    "random", "+correct", "+correct+compressed", "+correct+compressed+diverse", "DED, best-accuracy teacher")
CURVE = "random verified-correct"  # curve arms are named f"{CURVE} x{k}"


def curve_arm(k: int) -> str:
    return f"{CURVE} x{k}"


@dataclass
class AblationResult:
    table: pd.DataFrame  # one row per arm x seed x suite: arm, teacher, rows, seed, suite, avg_at_k, ci_low, ci_high
    summary: pd.DataFrame  # one row per arm x suite (:func:`summarize`)
    winner: str  # the smoke-test winner
    best_accuracy_teacher: str
    budget_rows: int
    curve: pd.DataFrame | None = None  # :func:`curve_table`: one row per (method, rows, suite), None without a curve
    paired: pd.DataFrame | None = None  # :func:`paired_summary` of DED minus every other arm, paired by seed


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per arm and suite, over seeds: ``mean``, ``sd`` (sample standard deviation, 0 with one seed),
    ``min``, ``max``, ``seeds``, the mean 95% CI bounds over questions (``ci_low``, ``ci_high``), and the
    95% t-interval of the mean over seeds (``seed_ci_low``, ``seed_ci_high``, cut to [0, 1]; the question
    CI with one seed, where the spread over seeds is unknown). Arms and suites keep their order in ``table`` (pure)."""
    from scipy.stats import t as student_t

    keys = ["arm", "teacher", "rows", "suite"]
    g = table.groupby(keys, sort=False)
    out = g["avg_at_k"].agg(mean="mean", sd="std", min="min", max="max", seeds="count")
    out["sd"] = out["sd"].fillna(0.0)
    out[["ci_low", "ci_high"]] = g[["ci_low", "ci_high"]].mean()
    n = out["seeds"]
    half = out["sd"] / n.pow(0.5) * n.map(lambda s: float(student_t.ppf(0.975, s - 1)) if s > 1 else 0.0)
    out["seed_ci_low"] = (out["mean"] - half).where(n > 1, out["ci_low"]).clip(lower=0.0)  # scores lie in [0, 1]
    out["seed_ci_high"] = (out["mean"] + half).where(n > 1, out["ci_high"]).clip(upper=1.0)
    return out.reset_index()


def paired_differences(table: pd.DataFrame, arm: str, baseline: str) -> pd.DataFrame:
    """Per seed and suite, ``arm`` minus ``baseline`` on the same seed: ``seed``, ``suite``, ``score`` (the
    arm's avg@k), ``baseline_score`` and ``diff``; seeds only one of the two ran are left out (pure)."""
    cols = ["seed", "suite", "avg_at_k"]
    a = table.loc[table["arm"] == arm, cols].rename(columns={"avg_at_k": "score"})
    b = table.loc[table["arm"] == baseline, cols].rename(columns={"avg_at_k": "baseline_score"})
    out = a.merge(b, on=["seed", "suite"], how="inner")
    out["diff"] = out["score"] - out["baseline_score"]
    return out.assign(arm=arm, baseline=baseline)[["arm", "baseline", "seed", "suite", "score", "baseline_score",
                                                      "diff"]]


def paired_summary(diffs: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, baseline, suite) of :func:`paired_differences` rows: ``seeds``, the arms' means, the mean
    per-seed difference ``diff``, its sample sd, the paired 95% t-interval of the mean difference
    (``ci_low``/``ci_high``: mean ± t(0.975, n - 1) x sd / sqrt(n), cut to [-1, 1]; NaN with one seed, where
    the spread is unknown) and ``wins``/``losses`` (seeds where the arm is ahead/behind). Pairing by seed
    removes what two arms of one seed share (its ``train.seed``), which the intervals of the two means over
    seeds do not (pure)."""
    from scipy.stats import t as student_t

    keys = ["arm", "baseline", "suite"]
    g = diffs.groupby(keys, sort=False)
    out = g.agg(seeds=("diff", "count"), score=("score", "mean"), baseline_score=("baseline_score", "mean"),
                diff=("diff", "mean"), sd=("diff", "std"), wins=("diff", lambda d: int((d > 0).sum())),
                losses=("diff", lambda d: int((d < 0).sum())))
    n = out["seeds"]
    half = out["sd"] / n.pow(0.5) * n.map(lambda s: float(student_t.ppf(0.975, s - 1)) if s > 1 else float("nan"))
    out["ci_low"] = (out["diff"] - half).clip(lower=-1.0)
    out["ci_high"] = (out["diff"] + half).clip(upper=1.0)
    return out.reset_index()


def canonical(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` in (question, teacher, sample index) order (index labels kept), so that a seeded draw from them
    does not depend on the order they arrived in (Ray Data returns blocks in the order they finish) (pure)."""
    keys = [c for c in C.ROW_ORDER if c in rows.columns]
    return rows.sort_values(keys, kind="stable")


def curve_budgets(n: int, multiples: list[int], epochs: int) -> list[tuple[int, int, int]]:
    """``(k, rows, epochs)`` of each curve arm: k x ``n`` rows for ``epochs / k`` epochs, so every arm takes
    the same optimizer steps as DED at ``n`` rows for ``epochs`` (up to the last partial batch of an
    epoch). A k that does not divide ``epochs`` is an error, not a silently unequal budget (pure)."""
    check_curve_multiples(multiples, epochs)
    return [(k, k * n, epochs // k) for k in multiples]


def curve_corpora(graded: pd.DataFrame, diverse: pd.DataFrame, n: int, multiples: list[int],
                  seed: int) -> dict[str, pd.DataFrame]:
    """The curve's corpora: DED at ``n`` rows (``diverse``, the DED corpus, cut to ``n``) and
    ``k x n`` random verified-correct rows of the teacher's graded samples for each k; the k = 1 arm
    is exactly the ``+correct`` arm of :func:`ablation_corpora` for the same seed (pure)."""
    graded, diverse = canonical(graded), canonical(diverse)
    ok = graded[ok_mask(graded)]
    if len(diverse) < n:
        raise ValueError(f"ablation curve: the DED corpus has {len(diverse)} rows, fewer than N = {n}")
    out = {DIVERSE: diverse.sample(n=n, random_state=seed).sort_values([C.QUESTION_ID, C.SAMPLE_INDEX])}
    for k in multiples:
        if len(ok) < k * n:
            raise ValueError(f"ablation curve: {k} x {n} = {k * n} rows asked, but the teacher has only {len(ok)} "
                             "verified-correct samples; lower ablation.budget_rows or the multiples, or raise "
                             "selection.samples_per_question or the pool size")
        out[curve_arm(k)] = ok.sample(n=k * n, random_state=seed).sort_values([C.QUESTION_ID, C.SAMPLE_INDEX])
    return out


def curve_table(summary: pd.DataFrame, multiples: list[int]) -> pd.DataFrame:
    """The curve from the summary over seeds: one row per (method ``DED`` or ``random``, rows, suite) with
    the summary's mean, sd, seeds and CIs, and ``multiple`` (rows / N); ``DED`` is the DED arm at N (pure)."""
    ded = summary[summary["arm"] == DIVERSE].assign(method="DED", multiple=1)
    parts = [ded] + [summary[summary["arm"] == curve_arm(k)].assign(method="random", multiple=k) for k in multiples]
    cols = ["method", "multiple", "rows", "suite", "mean", "sd", "seeds", "seed_ci_low", "seed_ci_high", "ci_low",
            "ci_high"]
    return pd.concat(parts, ignore_index=True)[cols]


def generated(graded: pd.DataFrame) -> pd.Series:
    """Rows the teacher really wrote: no generation error and a non-empty completion (pure)."""
    ok = graded[C.COMPLETION].fillna("").astype(str).str.strip() != ""
    if C.ERROR in graded.columns:
        ok &= graded[C.ERROR].fillna("").astype(str) == ""
    return ok


def ablation_corpora(graded: pd.DataFrame, kept_ids: set[str], diverse: pd.DataFrame, n: int,
                     seed: int) -> dict[str, pd.DataFrame]:
    """The four selection arms of one teacher's graded M samples, each cut to ``n`` rows (pure)."""
    graded, diverse = canonical(graded), canonical(diverse)
    ok = ok_mask(graded)
    pools = {
        RANDOM: graded[generated(graded)],  # any sample the teacher wrote; a failed request is no sample
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


def plan_arms(cfg: JobConfig, graded: pd.DataFrame, kept_ids: set[str], diverse: pd.DataFrame,
              other: pd.DataFrame | None, best: str, accurate: str, n: int,
              seed: int) -> tuple[dict[str, tuple[str, pd.DataFrame, int]], dict[str, str]]:
    """One seed's arms to train, ``{arm: (teacher, rows, epochs)}``, and the curve arms that equal a
    per-move arm and are not trained again, ``{curve arm: per-move arm}`` (pure).

    ``graded``/``diverse``: the smoke-test winner's graded samples and DED corpus; ``other``: the DED corpus
    of the best-accuracy teacher (None when it is the winner)."""
    a, epochs = cfg.ablation, cfg.train.epochs
    corpora: dict[str, tuple[str, pd.DataFrame, int]] = {}
    aliases: dict[str, str] = {}
    if a.moves:
        corpora = {arm: (best, df, epochs) for arm, df in ablation_corpora(graded, kept_ids, diverse, n, seed).items()}
        if other is not None:
            if len(other) < n:
                raise ValueError(f"ablation arm {OTHER_TEACHER!r}: {accurate}'s DED corpus has {len(other)} rows, fewer "
                                 f"than the budget of {n} (every arm trains on exactly N rows); lower "
                                 "ablation.budget_rows")
            drawn = canonical(other).sample(n=n, random_state=seed)
            corpora[OTHER_TEACHER] = (accurate, drawn, epochs)
    if a.curve:
        epochs_of = {curve_arm(k): e for k, _, e in curve_budgets(n, a.curve.multiples, epochs)}
        for arm, df in curve_corpora(graded, diverse, n, a.curve.multiples, seed).items():
            if arm == curve_arm(1) and CORRECT in corpora:
                aliases[arm] = CORRECT  # the same rows and recipe as +correct: trained once
            elif arm not in corpora:  # DED at N is the per-move DED arm when that ran
                corpora[arm] = (best, df, epochs_of.get(arm, epochs))
    return corpora, aliases


def best_accuracy_teacher(ranking: list[dict]) -> str:
    """The candidate whose own answers are most often right (ties: the smoke-test order)."""
    return max(ranking, key=lambda r: (r["teacher_accuracy"], -r["rank"]))["teacher"]


def run_ablation(cfg: JobConfig, tracker: Tracker, runner: StageRunner) -> AblationResult:
    from ray_distill import pipeline as P
    from ray_distill.accounting import check_budget, estimate_generation
    from ray_distill.curation.driver import generate, select, verify
    from ray_distill.curation.smoke_stage import smoke_test
    from ray_distill.evaluation.stage import evaluate
    from ray_distill.generation.store import GenerationStore
    from ray_distill.runtime import init_ray
    from ray_distill.training.replay import training_rows
    from ray_distill.training.sft import train_sft

    if cfg.ablation.curve:  # before any work: an unequal step budget is a config error
        try:
            curve_budgets(1, cfg.ablation.curve.multiples, cfg.train.epochs)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    init_ray(cfg)
    cfg = P.resolve_models(cfg)
    store = GenerationStore(join(cfg.storage, "generations"))
    base, pool, suites, dev = P.student_and_questions(cfg, runner)
    with runner.stage("smoke_test") as (t, rec):
        probe = probe_questions(cfg, pool)
        if cfg.budget.max_teacher_tokens is not None:
            check_budget(cfg, [estimate_generation(store, "generate_probe", probe, P._single(tc))
                               for tc in cfg.teachers], 0)
        probe_gen = pd.concat([generate(store, probe, P._single(tc), t, rec) for tc in cfg.teachers], ignore_index=True)
        graded_probe = verify(cfg, probe_gen, base, t, rec)
        ranking = smoke_test(cfg, {tc.name: graded_probe[graded_probe[C.TEACHER] == tc.name] for tc in cfg.teachers},
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
                check_budget(cfg, [estimate_generation(store, f"generate/{name}", pool, teacher)],
                             runner.totals()["teacher_tokens"] + rec.teacher_tokens)
            graded = verify(cfg, generate(store, pool, teacher, t, rec), base, t, rec)
            graded_by[name] = graded, select(cfg, graded[graded[C.QUESTION_ID].isin(kept_ids)], base)
            rec.rows_out = len(graded_by[name][1])
    n = cfg.ablation.budget_rows or len(graded_by[best][1])
    a = cfg.ablation
    rows = []
    for seed in a.seeds:
        graded, diverse = graded_by[best]
        other = graded_by[accurate][1] if accurate != best else None
        corpora, aliases = plan_arms(cfg, graded, kept_ids, diverse, other, best, accurate, n, seed)
        for arm, (teacher_name, df, epochs) in corpora.items():
            with runner.stage(f"arm/{arm}/seed{seed}", rows_in=len(df)) as (t, rec):
                corpus = [to_chat_row(r) for r in df.to_dict("records")]
                slug = f"{arm.replace('+', 'plus_').replace(',', '').replace(' ', '_')}-seed{seed}"
                trained = train_sft(training_rows(cfg, corpus)[0], base, join(cfg.run_dir, "ablation", slug),
                                    cfg.train.model_copy(update={"seed": seed, "epochs": epochs}),
                                    storage_path=join(cfg.run_dir, "ray_train"), run_name=f"ablation-{slug}",
                                    tracker_handle=t.handle(), log_model=False,
                                    chat_template=cfg.student.chat_template)
                scores = evaluate(cfg, trained.model_path, suites, t, prefix="after", rec=rec)
                t.log_params({"arm": arm, "teacher": teacher_name, "rows": len(corpus), "seed": seed,
                              "epochs": epochs})
                t.log_metrics({"steps": trained.metrics.get("steps", 0)})
                for suite, m in scores.items():
                    for name in [arm, *[c for c, same in aliases.items() if same == arm]]:
                        rows.append({"arm": name, "teacher": teacher_name, "rows": len(corpus), "seed": seed,
                                     "suite": suite, "avg_at_k": m["avg_at_k"], "ci_low": m["ci_low"],
                                     "ci_high": m["ci_high"], "epochs": epochs,
                                     "steps": trained.metrics.get("steps")})
    table = pd.DataFrame(rows)
    summary = summarize(table)
    tracker.log_table(table, "ablation.json")
    tracker.log_table(summary, "ablation_summary.json")
    moves = summary[~summary["arm"].str.startswith(CURVE)]
    if a.moves:
        tracker.log_figure(_chart(table[table["arm"].isin(set(moves["arm"]))], moves), "ablation.png")
    curve = None
    if a.curve:
        curve = curve_table(summary, a.curve.multiples)
        tracker.log_table(curve, "ablation_curve.json")
        tracker.log_figure(_curve_chart(curve, table), "ablation_curve.png")
    # DED minus every other arm on the same seed (a curve arm equal to +correct is not compared twice)
    others = [arm for arm in dict.fromkeys(table["arm"]) if arm != DIVERSE and arm not in aliases]
    paired = None
    if others:
        diffs = pd.concat([paired_differences(table, DIVERSE, arm) for arm in others], ignore_index=True)
        paired = paired_summary(diffs)
        tracker.log_table(diffs, "ablation_paired_seeds.json")
        tracker.log_table(paired, "ablation_paired.json")
    return AblationResult(table=table, summary=summary, winner=best, best_accuracy_teacher=accurate, budget_rows=n,
                          curve=curve, paired=paired)


def _curve_chart(curve: pd.DataFrame, table: pd.DataFrame):
    """Per suite: score vs training rows (log x). Random verified-correct rows at k x N as a line (mean over
    seeds, error bars: the 95% interval of the mean), DED at N as a star; every seed as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    suites = list(dict.fromkeys(curve["suite"]))
    fig, axes = plt.subplots(1, len(suites), figsize=(5 * len(suites), 3.8), squeeze=False)
    for ax, suite in zip(axes[0], suites):
        sub = curve[curve["suite"] == suite]
        for method, style in (("random", "o-"), ("DED", "r*")):
            m = sub[sub["method"] == method].sort_values("rows")
            err = [m["mean"] - m["seed_ci_low"], m["seed_ci_high"] - m["mean"]]
            ax.errorbar(m["rows"], m["mean"], yerr=err, fmt=style, capsize=4, markersize=10 if method == "DED" else 5,
                        label="DED at N" if method == "DED" else "random verified-correct, k x N")
        arms = {DIVERSE: "DED"} | {a: "random" for a in table["arm"].unique() if a.startswith(CURVE)}
        dots = table[(table["suite"] == suite) & table["arm"].isin(arms)]
        ax.plot(dots["rows"], dots["avg_at_k"], "k.", markersize=3, alpha=0.6)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # only the arms' row counts as tick labels
        ax.set_xticks(sorted(sub["rows"].unique()), [f"{r:,}" for r in sorted(sub["rows"].unique())])
        ax.set_xlabel("training rows (same optimizer steps)")
        ax.set_ylabel("avg@k")
        seeds = int(sub["seeds"].max())
        ax.set_title(f"{suite}: mean over {seeds} seed{'s' if seeds > 1 else ''}, 95% CI", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    plt.close(fig)
    return fig


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
