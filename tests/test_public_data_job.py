"""End to end on public-data layouts: jobs/public_data.yaml exactly as the README runs it (local Ray cluster,
scripted teachers, the micro student sampled by vLLM and trained by Ray Train, MLflow SQLite store). A
NuminaMath-shaped parquet (problem/solution/id, answers from the last \\boxed{}) and an s1K-shaped JSON-lines
file with a byte order mark (the dev suite) are read through `fields:`; teacher answers are verified by
math-verify and a (scripted) LLM judge; the student is scored on an AIME-style and a GPQA-style suite preset
with their own k, and on a local lm-evaluation-harness task."""

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


def test_public_data_job_end_to_end(tmp_path):
    env = {**os.environ, "RAY_DISTILL_STORAGE": str(tmp_path), "COLUMNS": "200"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "ray_distill.cli", "run", "jobs/public_data.yaml"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    storage = tmp_path / "outputs"
    run_dir = storage / "public-data"
    assert "macro (all)" in proc.stdout and "macro (in_domain)" in proc.stdout and "macro (ood)" in proc.stdout

    # the question file's bad rows went to the rejects file with their reasons; the valid ones were all kept
    rejects = [json.loads(line) for line in (run_dir / "rejects" / "questions.jsonl").read_text().splitlines()]
    assert sorted(r["reason"].split(":")[0] for r in rejects) == ["duplicate_id", "no_boxed_answer"]
    suite_rejects = (run_dir / "rejects" / "suite_aime_style.jsonl").read_text()
    assert "invalid_answer: aime answers are integers, got '1/2'" in suite_rejects

    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    exp = client.get_experiment_by_name("ray-distill")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.info.run_name == "public-data"]
    assert parent.data.metrics["rows/questions"] == 40 and parent.data.metrics["rows/diverse"] > 0
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert children["questions"].data.metrics["dev/questions"] == 12  # every s1K-shaped row, BOM line included
    ev = children["evaluate"].data.metrics
    for when in ("before", "after"):
        aime = {k: ev[f"{when}/aime_style/{k}"] for k in ("k", "n_questions", "avg_at_k", "pass_at_2", "ci_low",
                                                          "ci_high")}
        assert (aime["k"], aime["n_questions"]) == (2, 8)  # eval.k, and the non-integer answer rejected
        assert 0.0 <= aime["ci_low"] <= aime["avg_at_k"] <= aime["ci_high"] <= 1.0 and aime["ci_high"] > 0
        assert aime["avg_at_k"] <= aime["pass_at_2"]
        assert (ev[f"{when}/gpqa_style/k"], ev[f"{when}/gpqa_style/n_questions"]) == (1, 8)  # the suite's own k
        macro = (aime["avg_at_k"] + ev[f"{when}/gpqa_style/avg_at_k"]) / 2
        assert ev[f"{when}/macro_all/avg_at_k"] == pytest.approx(macro)
        assert ev[f"{when}/macro_in_domain/avg_at_k"] == pytest.approx(aime["avg_at_k"])
        assert ev[f"{when}/macro_ood/avg_at_k"] == pytest.approx(ev[f"{when}/gpqa_style/avg_at_k"])

    # the corpus questions carry the file's ids, and their reference answers came out of the worked solutions
    corpus = [json.loads(line) for line in (run_dir / "corpus" / "corpus.jsonl").read_text().splitlines()]
    assert corpus and all(row["question_id"].isdigit() and 1000 <= int(row["question_id"]) < 1040 for row in corpus)
    assert all(row["messages"][1]["content"].endswith("}") for row in corpus)
    # the scripted judge checked every formatted teacher answer of the main generation (in the streaming
    # plane's grading plan) against the reference: its calls are counted, and it agrees with math-verify
    verify = children["verify"].data.metrics
    assert verify["judge/calls"] > 0 and verify["judge/agreement_rows"] > 0 and verify["judge/agreement"] >= 0.9
    assert parent.data.metrics["total/judge_calls"] >= verify["judge/calls"]
    # lm-evaluation-harness ran its local task on the base and the exported student, into the same evaluate run
    for prefix in ("before", "after"):
        assert 0.0 <= ev[f"{prefix}/harness/ray_distill_max_ood/exact_match/boxed"] <= 1.0, prefix
    assert "lm-evaluation-harness (base student, exported student)" in proc.stdout
