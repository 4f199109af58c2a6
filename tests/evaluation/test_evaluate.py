"""evaluate_suites end to end on a random micro student (real vLLM on CPU): structure, not scores."""

from __future__ import annotations

from ray_distill.evaluation.evaluate import evaluate_suites
from ray_distill.synthetic.tasks import make_questions


def test_evaluate_suites_one_pass(ray_local, tiny_student_path):
    suites = {"arith": make_questions("arith", 6, 1, 2, seed=9), "max": make_questions("max", 4, 1, 2, seed=9)}
    # "max" draws its own k (3) in the same engine pass (same temperature and max_tokens) and reports pass@2
    scores = evaluate_suites(tiny_student_path, suites, k=2, temperature=1.0, max_tokens=16,
                             settings={"max": {"k": 3}}, pass_k={"max": [2]})
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
