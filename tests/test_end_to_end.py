"""End to end: a smaller quickstart through the real CLI (local Ray cluster, scripted teachers, vLLM
student sampling, Ray Train, MLflow SQLite store), then a Tune search on the same stored generations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Smaller than jobs/quickstart.yaml so the suite stays within budget; same code path.
SMALL = [
    "questions.synthetic.num_questions=300",
    "smoke_test.probe_questions=150",
    "smoke_test.epochs=4",
    "eval.suites.0.synthetic.num_questions=60",
    "eval.suites.1.synthetic.num_questions=40",
    "eval.k=2",
]


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("storage")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": "", "COLUMNS": "200"}
    env.pop("RAY_ADDRESS")
    cmd = [sys.executable, "-m", "ray_distill.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


def _runs(storage: Path, experiment: str = "ray-distill") -> list:
    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_quickstart_end_to_end(storage):
    proc = _cli("run", str(ROOT / "jobs/quickstart.yaml"), f"storage={storage}", *SMALL, cwd=storage)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = proc.stdout
    for title in ("Teacher smoke test", "Rows kept at each stage", "Student avg@k", "Wall time per stage"):
        assert title in out

    runs = _runs(storage)
    (parent,) = [r for r in runs if r.info.run_name == "quickstart"]
    metrics = parent.data.metrics
    # rows per stage: all questions → compressed → generated (M per kept question) → correct → diverse (≤ P each)
    assert metrics["rows/questions"] == 300
    assert 0 < metrics["rows/compressed"] < 300  # the base student solves the single-step questions
    assert metrics["rows/generated"] == 8 * metrics["rows/compressed"]
    assert metrics["rows/diverse"] <= min(metrics["rows/correct"], 4 * metrics["rows/compressed"])

    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    stages = {r.info.run_name for r in children}
    assert {"student", "questions", "generate_probe", "verify_probe", "smoke_test", "compress", "generate",
            "verify", "select", "corpus", "train", "evaluate"} <= stages
    (smoke,) = [r for r in children if r.info.run_name == "smoke_test"]
    teachers = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == smoke.info.run_id}
    assert teachers == {"teacher/concise", "teacher/verbose", "teacher/sloppy"}

    (ev,) = [r for r in children if r.info.run_name == "evaluate"]
    before, after = ev.data.metrics["before/arith_2to3/avg_at_k"], ev.data.metrics["after/arith_2to3/avg_at_k"]
    assert after > before + 0.2, (before, after)

    corpus = storage / "quickstart" / "corpus" / "corpus.jsonl"
    row = json.loads(corpus.read_text().splitlines()[0])
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert (storage / "quickstart" / "student" / "config.json").exists()


def test_tune_reuses_generations(storage):
    proc = _cli("tune", str(ROOT / "jobs/quickstart_tune.yaml"), f"storage={storage}",
                "questions.synthetic.num_questions=300", "eval.suites.0.synthetic.num_questions=60",
                "eval.suites.1.synthetic.num_questions=40", "eval.k=2", "train.epochs=10",
                "tune.search_space={selection.max_questions: [10, 30, 60]}", cwd=storage)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "best trial" in proc.stdout
    runs = _runs(storage)
    (parent,) = [r for r in runs if r.info.run_name == "quickstart-tune-tune"]
    descendants = {parent.info.run_id}
    for _ in range(3):
        descendants |= {r.info.run_id for r in runs if r.data.tags.get("mlflow.parentRunId") in descendants}
    trials = [r for r in runs if r.info.run_id in descendants and r.info.run_name.startswith("trial-")]
    assert len(trials) == 3
    assert all("score" in t.data.metrics for t in trials)
    assert sorted(t.data.metrics["corpus_questions"] for t in trials) == [10, 30, 60]
    assert (storage / "quickstart-tune" / "best_job.yaml").exists()
