import pandas as pd
import pytest

from ray_distill import columns as C
from ray_distill.ablation import (COMPRESSED, CORRECT, DIVERSE, RANDOM, ablation_corpora,
                                  best_accuracy_teacher, summarize)


def graded() -> pd.DataFrame:
    rows = []
    for q in range(6):
        for i in range(4):
            rows.append({C.QUESTION_ID: f"q{q}", C.SAMPLE_INDEX: i, C.COMPLETION: f"{q}-{i}",
                         C.FORMAT_OK: i != 3, C.CORRECT: i != 2})
    return pd.DataFrame(rows)


def test_arms_do_not_depend_on_the_order_rows_arrive_in():
    # Ray Data hands verified and selected rows back in the order its actors finish blocks: a seeded draw
    # must give the same arms from any order (it once gave a different DED arm on a rerun of the curve)
    from ray_distill.ablation import curve_corpora

    g = graded()
    kept = {"q0", "q1", "q2", "q3"}
    diverse = g[(g[C.QUESTION_ID].isin(kept)) & (g[C.SAMPLE_INDEX] <= 1)]
    shuffled_g, shuffled_d = g.sample(frac=1, random_state=7), diverse.sample(frac=1, random_state=8)
    assert not shuffled_d[C.COMPLETION].tolist() == diverse[C.COMPLETION].tolist()
    for seed in (0, 1):
        a, b = ablation_corpora(g, kept, diverse, 5, seed), ablation_corpora(shuffled_g, kept, shuffled_d, 5, seed)
        c, d = curve_corpora(g, diverse, 3, [1, 2], seed), curve_corpora(shuffled_g, shuffled_d, 3, [1, 2], seed)
        for x, y in ((a, b), (c, d)):
            texts = {k: v[C.COMPLETION].tolist() for k, v in x.items()}
            assert texts == {k: v[C.COMPLETION].tolist() for k, v in y.items()}


def test_arms_have_equal_size_and_their_own_filters():
    g = graded()
    kept = {"q0", "q1", "q2"}
    diverse = g[(g[C.QUESTION_ID].isin(kept)) & (g[C.SAMPLE_INDEX] <= 1)]  # 6 rows
    arms = ablation_corpora(g, kept, diverse, n=6, seed=0)
    assert {k: len(v) for k, v in arms.items()} == {RANDOM: 6, CORRECT: 6, COMPRESSED: 6, DIVERSE: 6}
    for arm in (CORRECT, COMPRESSED, DIVERSE):
        assert (arms[arm][C.FORMAT_OK] & arms[arm][C.CORRECT]).all()
    assert set(arms[COMPRESSED][C.QUESTION_ID]) <= kept
    assert arms[DIVERSE].equals(diverse.sort_values([C.QUESTION_ID, C.SAMPLE_INDEX]))
    # deterministic for a seed
    again = ablation_corpora(g, kept, diverse, n=6, seed=0)
    assert all(arms[k].equals(again[k]) for k in arms)


def test_budget_larger_than_an_arm_is_an_error():
    g = graded()
    with pytest.raises(ValueError, match=r"'\+correct\+compressed' has 6 rows, fewer than the budget of 7"):
        ablation_corpora(g, {"q0", "q1", "q2"}, g, n=7, seed=0)


def test_best_accuracy_teacher_ignores_the_smoke_test_rank():
    ranking = [{"teacher": "concise", "rank": 1, "teacher_accuracy": 0.95},
               {"teacher": "verbose", "rank": 2, "teacher_accuracy": 1.0},
               {"teacher": "sloppy", "rank": 3, "teacher_accuracy": 1.0}]
    assert best_accuracy_teacher(ranking) == "verbose"  # tie on accuracy: the better smoke-test rank


def test_summary_over_seeds_keeps_arm_order_and_spread():
    table = pd.DataFrame([
        {"arm": arm, "teacher": "t", "rows": 10, "seed": seed, "suite": suite, "avg_at_k": score,
         "ci_low": score - 0.1, "ci_high": score + 0.1}
        for arm, scores in [("+correct", [0.2, 0.4, 0.3]), ("random", [0.1, 0.1, 0.1])]
        for seed, score in enumerate(scores) for suite in ("in", "ood")])
    s = summarize(table)
    assert s[["arm", "suite"]].values.tolist() == [["+correct", "in"], ["+correct", "ood"], ["random", "in"],
                                                   ["random", "ood"]]
    first = s.iloc[0]
    assert (first["mean"], first["min"], first["max"], first["seeds"]) == (pytest.approx(0.3), 0.2, 0.4, 3)
    assert first["sd"] == pytest.approx(0.1) and first["ci_low"] == pytest.approx(0.2)
    assert s.iloc[2]["sd"] == pytest.approx(0.0)
    one = summarize(table[table["seed"] == 0])
    assert (one["seeds"] == 1).all() and (one["sd"] == 0).all()  # one seed: no NaN spread


def test_ablation_seeds_are_validated():
    from pydantic import ValidationError

    from ray_distill.config import AblationConfig

    assert AblationConfig().seeds == [0]
    with pytest.raises(ValidationError, match="distinct"):
        AblationConfig(seeds=[1, 1])
    with pytest.raises(ValidationError):
        AblationConfig(seeds=[])


def test_chart_has_a_bar_per_arm_and_a_dot_per_seed():
    from ray_distill.ablation import _chart

    table = pd.DataFrame([{"arm": arm, "teacher": "t", "rows": 10, "seed": seed, "suite": suite, "avg_at_k": 0.1 * seed,
                           "ci_low": 0.0, "ci_high": 0.5} for arm in ("a", "b", "c") for seed in (1, 2)
                          for suite in ("in", "ood")])
    fig = _chart(table, summarize(table))
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert len(ax.patches) == 3 and "mean ± sd over 2 seeds" in ax.get_title()
        assert sum(len(line.get_ydata()) for line in ax.lines if line.get_marker() == ".") == 6


def test_curve_budgets_hold_optimizer_steps_fixed():
    from ray_distill.ablation import curve_budgets

    budgets = curve_budgets(500, [1, 2, 4, 8], 96)
    assert budgets == [(1, 500, 96), (2, 1000, 48), (4, 2000, 24), (8, 4000, 12)]
    assert {rows * epochs for _, rows, epochs in budgets} == {48_000}  # rows seen = the same steps x batch
    with pytest.raises(ValueError, match=r"multiples \[4\] do not divide train.epochs=18"):
        curve_budgets(500, [1, 2, 4], 18)


def test_curve_corpora_draw_k_times_n_verified_rows_and_ded_at_n():
    from ray_distill.ablation import curve_arm, curve_corpora

    g = graded()  # 6 questions x 4 samples, 12 of them format-ok and correct
    diverse = g[g[C.SAMPLE_INDEX] <= 1]
    arms = curve_corpora(g, diverse, n=3, multiples=[1, 2, 4], seed=1)
    assert {k: len(v) for k, v in arms.items()} == {DIVERSE: 3, curve_arm(1): 3, curve_arm(2): 6, curve_arm(4): 12}
    for k in (1, 2, 4):
        assert (arms[curve_arm(k)][C.FORMAT_OK] & arms[curve_arm(k)][C.CORRECT]).all()
    assert set(arms[DIVERSE].index) <= set(diverse.index)
    # k = 1 is the +correct arm of the per-move ablation (trained once when both run), and DED at N its DED arm
    moves = ablation_corpora(g, {"q0", "q1"}, diverse, n=3, seed=1)
    assert arms[curve_arm(1)].equals(moves[CORRECT]) and arms[DIVERSE].equals(moves[DIVERSE])
    with pytest.raises(ValueError, match=r"8 x 3 = 24 rows asked, but the teacher has only 12 verified-correct"):
        curve_corpora(g, diverse, n=3, multiples=[8], seed=1)


def _curve_runs() -> pd.DataFrame:
    from ray_distill.ablation import curve_arm

    runs = [(DIVERSE, 10, [0.5, 0.7, 0.6])] + [(curve_arm(k), 10 * k, [0.1 * k, 0.1 * k + 0.1, 0.1 * k + 0.2])
                                               for k in (1, 2, 4)]
    return pd.DataFrame([{"arm": arm, "teacher": "t", "rows": rows, "seed": seed, "suite": suite, "avg_at_k": score,
                          "ci_low": score - 0.05, "ci_high": score + 0.05}
                         for arm, rows, scores in runs for seed, score in enumerate(scores) for suite in ("in", "ood")])


def test_summary_gives_the_t_interval_of_the_mean_over_seeds():
    s = summarize(_curve_runs()).set_index(["arm", "suite"])
    ded = s.loc[(DIVERSE, "in")]
    # mean 0.6, sd 0.1, 3 seeds: half-width t(0.975, 2) * 0.1 / sqrt(3) = 4.303 * 0.0577 = 0.248
    assert ded["seed_ci_low"] == pytest.approx(0.6 - 0.2484, abs=1e-3)
    assert ded["seed_ci_high"] == pytest.approx(0.6 + 0.2484, abs=1e-3)
    wide = summarize(_curve_runs().assign(avg_at_k=lambda d: d["seed"] * 0.45)).iloc[0]  # 0, 0.45, 0.9
    assert (wide["seed_ci_low"], wide["seed_ci_high"]) == (0.0, 1.0)  # a t-interval past [0, 1] is cut there
    one = summarize(_curve_runs().query("seed == 0")).set_index(["arm", "suite"]).loc[(DIVERSE, "in")]
    assert (one["seed_ci_low"], one["seed_ci_high"]) == (pytest.approx(0.45), pytest.approx(0.55))  # question CI


def test_curve_table_and_its_log_x_chart():
    from ray_distill.ablation import _curve_chart, curve_table

    table = _curve_runs()
    curve = curve_table(summarize(table), [1, 2, 4])
    ins = curve[curve["suite"] == "in"]
    assert ins[["method", "multiple", "rows"]].values.tolist() == [["DED", 1, 10], ["random", 1, 10],
                                                                   ["random", 2, 20], ["random", 4, 40]]
    assert ins["mean"].tolist() == pytest.approx([0.6, 0.2, 0.3, 0.5])
    assert (ins["seeds"] == 3).all()
    fig = _curve_chart(curve, table)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert ax.get_xscale() == "log" and "3 seeds" in ax.get_title()
        assert sum(len(line.get_ydata()) for line in ax.lines if line.get_marker() == ".") == 12  # a dot per run


def test_curve_config_is_validated():
    from pydantic import ValidationError

    from ray_distill.config import AblationConfig

    assert AblationConfig(curve={}).curve.multiples == [1, 2, 4, 8]
    with pytest.raises(ValidationError, match="distinct ascending"):
        AblationConfig(curve={"multiples": [2, 1]})
    with pytest.raises(ValidationError, match="no arm to run"):
        AblationConfig(moves=False)


def test_plan_arms_trains_each_corpus_once_with_the_curve_epochs():
    from pathlib import Path

    from ray_distill.ablation import OTHER_TEACHER, curve_arm, plan_arms
    from ray_distill.config import load_config

    job = Path(__file__).resolve().parents[1] / "jobs" / "ablation_curve.yaml"
    g = graded()
    diverse = g[g[C.SAMPLE_INDEX] <= 1]
    other = diverse.assign(teacher="verbose")
    curve_only = load_config(job, ["ablation.curve.multiples=[1,2,4]", "train.epochs=8"])
    arms, aliases = plan_arms(curve_only, g, {"q0", "q1"}, diverse, other, "concise", "verbose", n=3, seed=0)
    assert {arm: (len(df), epochs) for arm, (_, df, epochs) in arms.items()} == {
        DIVERSE: (3, 8), curve_arm(1): (3, 8), curve_arm(2): (6, 4), curve_arm(4): (12, 2)}
    assert aliases == {}
    both = load_config(job, ["ablation.moves=true", "ablation.curve.multiples=[1,2]", "train.epochs=8"])
    arms, aliases = plan_arms(both, g, {"q0", "q1"}, diverse, other, "concise", "verbose", n=3, seed=0)
    assert list(arms) == [RANDOM, CORRECT, COMPRESSED, DIVERSE, OTHER_TEACHER, curve_arm(2)]
    assert aliases == {curve_arm(1): CORRECT}  # the same rows and recipe as +correct: not trained twice
    assert arms[OTHER_TEACHER][0] == "verbose" and arms[DIVERSE][2] == 8 and arms[curve_arm(2)][2] == 4


def test_every_arm_has_exactly_n_rows_and_never_a_failed_generation():
    """The random arm draws only samples the teacher really wrote (a failed request, empty completion and an
    error, is no sample); the best-accuracy teacher's arm gets exactly N rows or the run refuses (it used to be
    cut to what that teacher had, silently smaller than every other arm)."""
    from pathlib import Path

    from ray_distill.ablation import OTHER_TEACHER, plan_arms
    from ray_distill.config import load_config

    g = graded().assign(**{C.ERROR: ""})
    failed = g[C.SAMPLE_INDEX] == 3  # one failed request per question: no text, an error
    g.loc[failed, C.COMPLETION], g.loc[failed, C.ERROR] = "", "timeout"
    kept = {"q0", "q1", "q2"}
    diverse = g[(g[C.QUESTION_ID].isin(kept)) & (g[C.SAMPLE_INDEX] <= 1)]
    for seed in range(5):  # 6 of 24 rows failed: a draw of 6 that ignored it would hit one in 5 seeds (p > 0.9999)
        arm = ablation_corpora(g, kept, diverse, n=6, seed=seed)[RANDOM]
        assert len(arm) == 6 and (arm[C.ERROR] == "").all() and (arm[C.COMPLETION] != "").all()
    with pytest.raises(ValueError, match=r"'random' has 18 rows, fewer than the budget of 19"):
        ablation_corpora(g, kept, diverse, n=19, seed=0)
    job = Path(__file__).resolve().parents[1] / "jobs" / "ablation_curve.yaml"
    cfg = load_config(job, ["ablation.moves=true", "ablation.curve=null"])
    small_other = diverse.head(2).assign(teacher="verbose")
    with pytest.raises(ValueError, match=rf"ablation arm '{OTHER_TEACHER}': verbose's DED corpus has 2 rows, fewer "
                                         r"than the budget of 3 \(every arm trains on exactly N rows\)"):
        plan_arms(cfg, g, kept, diverse, small_other, "concise", "verbose", n=3, seed=0)
    arms, _ = plan_arms(cfg, g, kept, diverse, diverse.assign(teacher="verbose"), "concise", "verbose", n=3, seed=0)
    assert {len(df) for _, df, _ in arms.values()} == {3}


def _scores(arm: str, scores: list[float], suite: str = "in", seeds: list[int] | None = None) -> list[dict]:
    return [{"arm": arm, "teacher": "t", "rows": 10, "seed": s, "suite": suite, "avg_at_k": v, "ci_low": v - 0.05,
             "ci_high": v + 0.05} for s, v in zip(seeds or range(len(scores)), scores)]


def test_paired_interval_on_hand_worked_numbers():
    from ray_distill.ablation import paired_differences, paired_summary

    # suite "in": differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1, t(0.975, 2) = 4.302653,
    # half-width 4.302653 x 0.1 / sqrt(3) = 0.248414
    # suite "ood": differences 0.3, -0.1, 0.2, 0.0: mean 0.1, sd sqrt(0.10 / 3) = 0.182574,
    # t(0.975, 3) = 3.182446, half-width 3.182446 x 0.182574 / 2 = 0.290516; one tie, so 2 wins and 1 loss
    table = pd.DataFrame(_scores(DIVERSE, [0.5, 0.6, 0.7]) + _scores("random", [0.4, 0.4, 0.4])
                         + _scores(DIVERSE, [0.5, 0.3, 0.6, 0.4], "ood")
                         + _scores("random", [0.2, 0.4, 0.4, 0.4], "ood"))
    diffs = paired_differences(table, DIVERSE, "random")
    assert diffs[diffs["suite"] == "in"]["diff"].round(9).tolist() == [0.1, 0.2, 0.3]
    s = paired_summary(diffs).set_index("suite")
    assert s.loc["in", "seeds"] == 3 and s.loc["in", "diff"] == pytest.approx(0.2)
    assert s.loc["in", "sd"] == pytest.approx(0.1)
    assert (s.loc["in", "ci_low"], s.loc["in", "ci_high"]) == pytest.approx((-0.048414, 0.448414), abs=1e-6)
    assert (s.loc["in", "wins"], s.loc["in", "losses"]) == (3, 0)
    assert s.loc["in", "score"] == pytest.approx(0.6) and s.loc["in", "baseline_score"] == pytest.approx(0.4)
    assert s.loc["ood", "diff"] == pytest.approx(0.1) and s.loc["ood", "sd"] == pytest.approx(0.182574, abs=1e-6)
    assert (s.loc["ood", "ci_low"], s.loc["ood", "ci_high"]) == pytest.approx((-0.190516, 0.390516), abs=1e-6)
    assert (s.loc["ood", "wins"], s.loc["ood", "losses"]) == (2, 1)


def test_paired_interval_matches_scipy_paired_t_test_and_pairs_by_seed():
    from scipy.stats import ttest_rel

    from ray_distill.ablation import paired_differences, paired_summary

    a, b = [0.42, 0.30, 0.29, 0.55, 0.61, 0.38], [0.49, 0.29, 0.26, 0.47, 0.52, 0.33]
    # the baseline's rows arrive in another seed order, and it ran one seed the arm did not: pairing is by seed
    table = pd.DataFrame(_scores(DIVERSE, a) + _scores("random", b[::-1] + [0.9], seeds=[5, 4, 3, 2, 1, 0, 6]))
    s = paired_summary(paired_differences(table, DIVERSE, "random")).iloc[0]
    ci = ttest_rel(a, b).confidence_interval(0.95)
    assert s["seeds"] == 6
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((ci.low, ci.high))


def test_pairing_removes_the_shared_seed_spread():
    # DED is ahead by 0.05 +- 0.01 on every seed, while seeds move both arms by up to 0.4: the paired interval
    # excludes 0 although the two arms' intervals over seeds overlap
    from ray_distill.ablation import paired_differences, paired_summary

    base = [0.1, 0.5, 0.3, 0.45, 0.2, 0.35, 0.15, 0.4, 0.25, 0.3]
    ded = [v + 0.05 + (0.01 if i % 2 else -0.01) for i, v in enumerate(base)]
    table = pd.DataFrame(_scores(DIVERSE, ded) + _scores("random", base))
    over_seeds = summarize(table).set_index("arm")
    assert over_seeds.loc[DIVERSE, "seed_ci_low"] < over_seeds.loc["random", "seed_ci_high"]
    s = paired_summary(paired_differences(table, DIVERSE, "random")).iloc[0]
    assert 0.04 < s["ci_low"] < 0.05 < s["ci_high"] < 0.06 and s["wins"] == 10


def test_paired_interval_is_unknown_with_one_seed():
    from ray_distill.ablation import paired_differences, paired_summary

    s = paired_summary(paired_differences(pd.DataFrame(_scores(DIVERSE, [0.5]) + _scores("random", [0.3])),
                                          DIVERSE, "random")).iloc[0]
    assert s["diff"] == pytest.approx(0.2) and s["seeds"] == 1
    assert pd.isna(s["ci_low"]) and pd.isna(s["ci_high"])
