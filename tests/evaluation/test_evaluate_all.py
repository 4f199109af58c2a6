"""evaluation.stage.evaluate_all: several students sampled at once (real vLLM actors on the local cluster, without
long-lived engines), each model's scores logged to its own MLflow run, the same scores as evaluating that model alone
on a long-lived engine host."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from ray_distill.config import config_from_dict
from ray_distill.evaluation.stage import evaluate, evaluate_all
from ray_distill.synthetic.student import save_random_student
from ray_distill.synthetic.tasks import make_questions
from ray_distill.tracking import MLflowTracker, NullTracker


def _cfg(storage, long_lived: bool = True) -> object:
    return config_from_dict({"storage": str(storage), "questions": {"synthetic": {"num_questions": 10}},
                             "teachers": [{"name": "t", "engine": {"kind": "scripted", "persona": "concise"}}],
                             "student": {"serving": {"long_lived": long_lived}},
                             "eval": {"k": 2, "temperature": 1.0, "max_tokens": 16}})


@pytest.mark.slow
def test_concurrent_evaluation_keeps_each_model_and_run_apart(ray_local, tiny_student_path, tmp_path):
    other = save_random_student("tiny", str(tmp_path / "other"), seed=1)
    suites = {"arith": make_questions("arith", 6, 1, 2, seed=9)}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    trackers = [MLflowTracker.create(uri, "eval-all", name, artifact_location=str(tmp_path / "art"))
                for name in ("a", "b", "a-again")]
    runs = [(tiny_student_path, trackers[0], "smoke"), (other, trackers[1], "smoke"),
            (tiny_student_path, trackers[2], "again")]  # the same model twice: sampled once, logged twice

    # without long-lived engines the models are sampled at once, a fresh engine actor pool each
    a, b, again = evaluate_all(_cfg(tmp_path / "s", long_lived=False), runs, suites)

    assert again == a and b != a  # two different random students
    # the same scores from a long-lived engine host (the default), evaluating the model alone in a fresh store
    assert b == evaluate(_cfg(tmp_path / "alone"), other, suites, NullTracker(), prefix="x")
    client = MlflowClient(uri)
    for tracker, prefix, scores in zip(trackers, ("smoke", "smoke", "again"), (a, b, again)):
        metrics = client.get_run(tracker.run_id).data.metrics
        assert metrics[f"{prefix}/arith/avg_at_k"] == scores["arith"]["avg_at_k"]
        assert metrics[f"{prefix}/arith/mean_length"] == scores["arith"]["mean_length"]
