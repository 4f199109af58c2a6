import pandas as pd

from ray_distill.tuning.pareto import pareto_front


def test_pareto_front_drops_dominated_points():
    df = pd.DataFrame({"corpus_rows": [100, 200, 300, 150, 400], "score": [0.5, 0.7, 0.6, 0.4, 0.9]})
    front = pareto_front(df)
    assert front["corpus_rows"].tolist() == [100, 200, 400]
    assert front["score"].tolist() == [0.5, 0.7, 0.9]


def test_equal_cost_keeps_best_score_only():
    df = pd.DataFrame({"corpus_rows": [100, 100], "score": [0.2, 0.3]})
    assert pareto_front(df)["score"].tolist() == [0.3]
