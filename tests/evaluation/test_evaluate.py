"""evaluate_suites end to end on a random micro student (real vLLM on CPU): structure, not scores."""

from __future__ import annotations

import pandas as pd
import pytest

from ray_distill.evaluation.evaluate import evaluate_suites
from ray_distill.generation.store import GenerationStore, model_digest
from ray_distill.synthetic.tasks import make_questions

pytestmark = pytest.mark.slow  # real Ray Train / vLLM: not a unit test (make test-fast skips it)


def test_evaluate_suites_one_pass(ray_local, tiny_student_path, tmp_path, caplog):
    """Scores of one pass; then the student samples come back from the generation store like a teacher's: the
    same call again (a rerun, a resumed job: another store object on the same root) makes 0 student generation
    calls and scores the same; a fresh store (a clean rerun) samples again and gets the very same completions
    (per-request seeds, vLLM on CPU)."""
    suites = {"arith": make_questions("arith", 6, 1, 2, seed=9), "max": make_questions("max", 4, 1, 2, seed=9)}
    # "max" draws its own k (3) and reports pass@2
    opts = {"settings": {"max": {"k": 3}}, "pass_k": {"max": [2]}}
    store = GenerationStore(str(tmp_path / "a"))
    with caplog.at_level("INFO", logger="ray_distill.evaluation.evaluate"):
        scores = evaluate_suites(tiny_student_path, suites, k=2, temperature=1.0, max_tokens=16, store=store, **opts)
    assert "(1 engine pass, engine starts included)" in caplog.text  # both suites, each its own k: one engine
    assert set(scores) == {"arith", "max"}
    for name, m in scores.items():
        assert set(m) == {"avg_at_k", "pass_at_1", "pass_at_k", "ci_low", "ci_high", "n_questions", "k",
                          "mean_length", "tokens", "n_errors", "question_rates"} | ({"pass_at_2"} if name == "max" else set())
        assert (m["n_questions"], m["k"]) == (len(suites[name]), 3 if name == "max" else 2)
        assert set(m["question_rates"]) == {q["question_id"] for q in suites[name]}
        assert sum(m["question_rates"].values()) / len(suites[name]) == m["avg_at_k"]
        assert 0.0 <= m["ci_low"] <= m["avg_at_k"] <= m["ci_high"] <= 1.0
        assert m["avg_at_k"] == m["pass_at_1"] <= m["pass_at_k"] <= 1.0
        assert m["n_errors"] == 0
        assert 0 < m["mean_length"] <= 16
    assert dict(store.totals["student"]) == {"requested": 24, "cached": 0, "generated": 24, "failed": 0}

    rerun_store = GenerationStore(str(tmp_path / "a"))
    rerun = evaluate_suites(tiny_student_path, suites, k=2, temperature=1.0, max_tokens=16, store=rerun_store, **opts)
    assert dict(rerun_store.totals["student"]) == {"requested": 24, "cached": 24, "generated": 0, "failed": 0}
    assert rerun == scores
    clean_store = GenerationStore(str(tmp_path / "b"))
    assert evaluate_suites(tiny_student_path, suites, k=2, temperature=1.0, max_tokens=16, store=clean_store,
                           **opts) == scores
    assert clean_store.totals["student"]["generated"] == 24

    def completions(s: GenerationStore) -> pd.Series:
        return s.load("student").set_index("generation_key")["completion"].sort_index()

    pd.testing.assert_series_equal(completions(store), completions(clean_store))
    assert len(model_digest(tiny_student_path)) == 32 and model_digest("org/name@main") == "org/name@main"


def test_large_sample_tables_are_graded_by_cluster_tasks_with_the_same_verdicts(ray_local):
    """From cluster_rows rows on, chunks of the table are graded by Ray tasks: the same verdicts, in the same
    rows (index and order kept), as grading in the driver; a failed generation stays an incorrect row."""
    import numpy as np

    from ray_distill import columns as C
    from ray_distill.evaluation import evaluate as E

    n = 2 * E.GRADING_CHUNK_ROWS + 7  # three chunks, the last one short
    rng = np.random.default_rng(0)
    answers = rng.integers(0, 20, n)
    said = np.where(rng.random(n) < 0.5, answers, answers + 1)
    df = pd.DataFrame({C.COMPLETION: [f"<think>so</think>\\boxed{{{s}}}" for s in said],
                       C.ANSWER: [str(a) for a in answers], C.ERROR: [""] * (n - 1) + ["timeout"]},
                      index=rng.permutation(n))
    here = E.grade_samples(df, cluster_rows=10**9)
    there = E.grade_samples(df, cluster_rows=1)
    pd.testing.assert_frame_equal(here, there)
    assert here[C.CORRECT].tolist() == [bool(s == a) for s, a in zip(said[:-1], answers[:-1])] + [False]
    assert here[C.REASON].iloc[-1] == "generation_error"
