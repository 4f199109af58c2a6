"""End to end: a smaller quickstart through the real CLI (local Ray cluster, scripted teachers, vLLM
student sampling, Ray Train, MLflow SQLite store), then a Tune search on the same stored generations."""

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

from ray_distill.config import load_config
from ray_distill.data.sources import load_source
from ray_distill.training.replay import replay_count

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Smaller than jobs/quickstart.yaml so the suite stays within budget; same code path.
SMALL = [
    "questions.synthetic.num_questions=300",
    "student.base_rows=2000",
    "student.base_epochs=2",
    "student.base_chains=500",
    "smoke_test.probe_questions=100",
    "smoke_test.epochs=3",
    "train.epochs=2",
    "eval.suites.0.synthetic.num_questions=60",
    "eval.suites.1.synthetic.num_questions=40",
    "eval.k=2",
    "replay.fraction=0.1",  # not in the quickstart (docs/ablation.md: its cost on seed 1); exercised here
]


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("storage")


# Secrets in the job's environment (tests/generation/test_canary.py checks the stage commands, validate and
# submit --dry-run with a hosted teacher): the whole `run` never writes one to the console, its log file, the
# MLflow store or anything under its storage.
CANARIES = {"HF_TOKEN": "hf_QuickstartCanary4Tq9Wz", "AWS_SECRET_ACCESS_KEY": "awsQuickstartCanary7Hy2",
            "OPENAI_API_KEY": "sk-quickstart-canary-Vb3Nm8"}


def _cli(*args: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """``ray-distill ARGS``: the installed command, as the README runs it (its entry point, not ``python -m``:
    the two once differed in where Ray's native stderr lines went)."""
    env = {**os.environ, "RAY_ADDRESS": "", "COLUMNS": "200", **(env_extra or {})}
    env.pop("RAY_ADDRESS")
    cmd = [str(Path(sys.executable).parent / "ray-distill"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


def _runs(storage: Path, experiment: str = "ray-distill") -> list:
    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_quickstart_end_to_end(storage, secrets_in_files):
    proc = _cli("run", str(ROOT / "jobs/quickstart.yaml"), f"storage={storage}", *SMALL, cwd=storage,
                env_extra=CANARIES)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = proc.stdout
    for title in ("Teacher smoke test", "Rows kept at each stage", "Student avg@k", "What each stage spent"):
        assert title in out
    assert "top two separable at 95%" in out or "top two cannot be separated at 95%" in out
    assert "teacher tokens per kept corpus sample" in out
    assert "Failed to query Ray Train Controller" not in proc.stdout + proc.stderr  # redact.drop_cleaner_noise
    # the console shows the job (stage lines, the tables, where things went); everything else is in the log file
    console_lines = (proc.stdout + proc.stderr).splitlines()
    assert len(console_lines) <= 80, "\n".join(console_lines)
    # COLUMNS=200: no line longer than the terminal; what Ray's C++ core writes straight to the process's stderr,
    # past Python (a "core_worker.cc" line per Data actor pool), goes to the log file (JobLog.capture_native_stderr)
    too_long = [ln for ln in console_lines if len(ln) > 200 or ".cc:" in ln]
    assert not too_long, "\n".join(too_long)
    (log_line,) = [ln for ln in console_lines if ln.startswith("log: ")]
    log_file = Path(log_line.removeprefix("log: "))
    assert log_file.parent == storage / "quickstart" / "logs"
    logged = log_file.read_text()
    assert "step " in logged and "stage train finished" in logged  # Ray Train's worker lines, our info lines
    assert "Failed to query Ray Train Controller" not in logged
    # one engine host sampled the whole job (the smoke-test students, the base, the trained student): kept through
    # the teacher's own actors and both Ray Train launches, which fit beside it on 3 logical CPUs (generation.hosts)
    loads = re.findall(r"engine host for \S+: loaded \S+ in [\d.]+ s \(([^)]*)\)", logged)
    assert len(loads) >= 5 and loads[0] == "new host" and all(h.startswith("swapped out") for h in loads[1:]), loads
    assert "kept 1 idle engine host through the Ray Train launch" in logged

    runs = _runs(storage)
    (parent,) = [r for r in runs if r.info.run_name == "quickstart"]
    metrics = parent.data.metrics
    # the first page a user opens: the command prints it, and the job's run lists the corpus it trained on
    assert f"MLflow UI: mlflow ui --backend-store-uri sqlite:///{storage}/mlflow.db --workers 1\n" in out
    assert (f"open the run: http://127.0.0.1:5000/#/experiments/{parent.info.experiment_id}/runs/"
            f"{parent.info.run_id}?workflowType=machine_learning") in out
    inputs = MlflowClient(f"sqlite:///{storage}/mlflow.db").get_run(parent.info.run_id).inputs.dataset_inputs
    assert [d.dataset.name for d in inputs] == ["curated_corpus"]
    # rows per stage: all questions → compressed → generated (M per kept question) → correct → diverse (≤ P each)
    assert metrics["rows/questions"] == 300
    assert 0 < metrics["rows/compressed"] < 300  # the base student solves the single-step questions
    assert metrics["rows/generated"] == 4 * metrics["rows/compressed"]  # M = 4 samples per kept question
    assert metrics["rows/diverse"] <= min(metrics["rows/correct"], 2 * metrics["rows/compressed"])  # P = 2
    # accounting: the teachers' tokens (probe + M samples) and the student's, CPU-seconds reserved by Ray work
    assert metrics["total/teacher_tokens"] > 0 and metrics["total/student_tokens"] > 0
    assert metrics["total/cpu_s"] > 0
    assert metrics["teacher_tokens_per_corpus_sample"] == pytest.approx(
        metrics["total/teacher_tokens"] / metrics["rows/diverse"])

    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    stages = {r.info.run_name for r in children}
    assert {"student", "questions", "generate_probe", "verify_probe", "smoke_test", "compress", "generate",
            "verify", "select", "corpus", "train", "evaluate"} <= stages
    (smoke,) = [r for r in children if r.info.run_name == "smoke_test"]
    teachers = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == smoke.info.run_id}
    assert teachers == {"teacher/concise", "teacher/verbose", "teacher/sloppy"}
    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    # a fair smoke test: every candidate fine-tuned on the same number of rows, scored with a CI on the dev suite
    ranking = _table(client, smoke.info.run_id, "teacher_ranking.json", storage)
    assert set(ranking["ranked_by"]) == {"student_score"} and ranking["rank"].tolist() == [1, 2, 3]
    assert ranking["train_rows"].nunique() == 1 and (ranking["train_rows"] > 0).all()
    assert (ranking["train_rows"] <= ranking["verified_rows"]).all()
    assert ((ranking["ci_low"] <= ranking["student_score"]) & (ranking["student_score"] <= ranking["ci_high"])).all()
    assert ranking["separable"].iloc[0] in (True, False)
    for r in runs:  # a smoke-test student is recorded by its path, not copied into MLflow
        if r.data.tags.get("mlflow.parentRunId") == smoke.info.run_id:
            assert r.data.tags["student_uri"] == str(storage / "quickstart" / "smoke" / r.info.run_name[8:])
            assert not client.list_artifacts(r.info.run_id, "student")

    (ev,) = [r for r in children if r.info.run_name == "evaluate"]
    for when in ("before", "after"):
        for suite in ("arith_2to3", "max_2to3"):
            m = {k: ev.data.metrics[f"{when}/{suite}/{k}"] for k in ("avg_at_k", "ci_low", "ci_high", "n_questions")}
            assert 0.0 <= m["ci_low"] <= m["avg_at_k"] <= m["ci_high"] <= 1.0
            assert m["n_questions"] == (60 if suite == "arith_2to3" else 40)
    (train,) = [r for r in children if r.info.run_name == "train"]
    losses = client.get_metric_history(train.info.run_id, "train/loss")
    assert losses[-1].value < losses[0].value
    assert train.data.tags["student_uri"] == str(storage / "quickstart" / "student")
    # the base student's own facts replayed: a tenth of the training rows, none of them in the corpus file
    assert train.data.metrics["train/replay_rows"] == replay_count(int(metrics["rows/diverse"]), 0.1) > 0

    # the student is an MLflow model of the job's run with its eval scores and the corpus it was trained on;
    # the run's description tells the story; the experiment opens in MLflow's model-training view
    (model,) = [m for m in client.search_logged_models([parent.info.experiment_id])
                if m.source_run_id == parent.info.run_id]
    linked = {m.key: m for m in model.metrics}
    assert linked["arith_2to3/avg_at_k"].value == ev.data.metrics["after/arith_2to3/avg_at_k"]
    assert linked["train_loss"].dataset_name == "curated_corpus"
    weights = client.list_logged_model_artifacts(model.model_id, "model")
    assert "config.json" in {os.path.basename(a.path) for a in weights}
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "logs")] == [f"logs/{log_file.name}"]
    description = parent.data.tags["mlflow.note.content"]
    assert f"Teacher: **{ranking['teacher'].iloc[0]}**" in description
    assert re.search(r"^arith_2to3  +\d\.\d{3}  +\d\.\d{3}  +\[", description, re.M), description  # a text table
    assert f"models:/{model.model_id}" in description
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"

    # the streaming plane: graded samples by question bucket and the selected rows on storage; every
    # generated sample is in the corpus or in the rejects with its stage and reason
    work = storage / "quickstart" / "data" / "generate"
    assert list((work / "graded").glob("bucket=*/*.parquet")) and list((work / "selected").glob("part-*.parquet"))
    rejects = [json.loads(line) for f in sorted((storage / "quickstart" / "rejects" / "generations").glob("*.jsonl"))
               for line in f.read_text().splitlines()]
    assert len(rejects) + metrics["rows/diverse"] == metrics["rows/generated"]
    assert {r["stage"] for r in rejects} <= {"verify", "select"} and all(r["reason"] for r in rejects)

    corpus = storage / "quickstart" / "corpus" / "corpus.jsonl"
    corpus_rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    assert [m["role"] for m in corpus_rows[0]["messages"]] == ["user", "assistant"]
    assert len(corpus_rows) == metrics["rows/diverse"]  # the curated rows only: replay is added at training
    assert (storage / "quickstart" / "student" / "config.json").exists()

    # no selection on the test set: the dev suite the smoke test scored on (read back from MLflow) shares
    # no question with any eval suite the job reports, nor with the training corpus
    (questions,) = [r for r in children if r.info.run_name == "questions"]
    dev = _table(client, questions.info.run_id, "dev_questions.json", storage)
    assert len(dev) == questions.data.metrics["dev/questions"] == 150
    assert questions.data.params["dev_suite"] == "dev_arith_1to3"
    cfg = load_config(ROOT / "jobs/quickstart.yaml", [f"storage={storage}", *SMALL])
    for suite in cfg.eval.suites:
        rows = load_source(suite)[0]
        assert not set(dev["question_id"]) & {r["question_id"] for r in rows}, suite.name
        assert not set(dev["question"]) & {r["question"] for r in rows}, suite.name
    assert not set(dev["question_id"]) & {r["question_id"] for r in corpus_rows}
    assert not set(dev["question"]) & {r["messages"][0]["content"] for r in corpus_rows}

    # no canary anywhere: console, log file, MLflow store and artifacts, stores, corpus, student, rejects
    leaks = [n for n, v in CANARIES.items() if v in proc.stdout + proc.stderr] + secrets_in_files(storage, CANARIES)
    assert not leaks, leaks


def test_the_printed_mlflow_ui_line_serves_the_printed_run(storage, tmp_path):
    """The quickstart's closing lines: `MLflow UI: mlflow ui --backend-store-uri …`, run as printed from outside
    the project, serves the store on MLflow's default address, where the printed run page's run exists."""
    import shlex
    import socket
    import time
    import urllib.request

    (parent,) = [r for r in _runs(storage) if r.info.run_name == "quickstart"]
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 5000)) == 0:
            pytest.skip("something already listens on 127.0.0.1:5000, the address `mlflow ui` serves on")
    line = f"mlflow ui --backend-store-uri sqlite:///{storage}/mlflow.db --workers 1"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = subprocess.Popen(shlex.split(line), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    api = f"http://127.0.0.1:5000/api/2.0/mlflow/runs/get?run_id={parent.info.run_id}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(api, timeout=2) as resp:
                    got = json.loads(resp.read())
                break
            except OSError:
                assert server.poll() is None, "mlflow ui exited"
                time.sleep(0.5)
        else:
            pytest.fail("mlflow ui did not answer within 120 s")
        assert got["run"]["info"]["run_name"] == "quickstart"
        assert got["run"]["info"]["experiment_id"] == parent.info.experiment_id
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a worker still starting on a busy host: the test's result stands
            os.killpg(server.pid, 9)
            server.wait(timeout=30)


def test_stage_commands_share_the_stores_and_artifacts(storage):
    """generate → curate → train → eval, each its own command (and MLflow run) on the same storage: curate
    finds every teacher sample generate stored, train takes curate's corpus, eval the exported student.
    (One teacher, no smoke test or compression: the stage boundaries are the point; `run` covers the rest.)"""
    small = [f"storage={storage}", *SMALL, "name=stages", "smoke_test.enabled=false", "compression.enabled=false",
             "questions.synthetic.num_questions=40", "dev.suite.synthetic.num_questions=10", "train.epochs=1",
             "eval.suites=[{name: max_2to3, domain: ood, synthetic: {family: max, num_questions: 10, "
             "min_difficulty: 2, max_difficulty: 3, seed: 102}}]", "eval.k=1"]
    job = str(ROOT / "jobs/quickstart.yaml")
    gen = _cli("generate", job, *small, cwd=storage)
    assert gen.returncode == 0, gen.stdout[-3000:] + gen.stderr[-5000:]
    assert "store: " in gen.stdout and not (storage / "stages" / "corpus").exists()
    cur = _cli("curate", job, *small, cwd=storage)
    assert cur.returncode == 0, cur.stdout[-3000:] + cur.stderr[-5000:]
    assert (storage / "stages" / "corpus" / "corpus.jsonl").exists() and not (storage / "stages" / "student").exists()
    trained = _cli("train", job, *small, "--corpus", str(storage / "stages" / "corpus"), cwd=storage)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-5000:]
    assert (storage / "stages" / "student" / "config.json").exists()
    ev = _cli("eval", job, *small, "--model", str(storage / "stages" / "student"), cwd=storage)
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-5000:]
    assert "Student avg@k" in ev.stdout and "max_2to3" in ev.stdout

    runs = {r.info.run_name: r for r in _runs(storage)}
    stages = {name: {r.info.run_name for r in _runs(storage) if r.data.tags.get("mlflow.parentRunId") == run.info.run_id}
              for name, run in runs.items() if name.startswith("stages-")}
    assert stages["stages-generate"] >= {"generate_probe", "generate"} and "verify" not in stages["stages-generate"]
    assert stages["stages-curate"] >= {"generate", "verify", "select", "corpus"} and "train" not in stages["stages-curate"]
    assert stages["stages-train"] == {"student", "corpus", "train"}
    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    (model,) = [m for m in client.search_logged_models([runs["stages-train"].info.experiment_id])
                if m.source_run_id == runs["stages-train"].info.run_id]  # train logs the student it made
    assert {m.key: m.dataset_name for m in model.metrics} == {"train_loss": "curated_corpus"}
    assert "**ray-distill train**" in runs["stages-train"].data.tags["mlflow.note.content"]
    assert stages["stages-eval"] == {"student", "questions", "evaluate"}
    # the quickstart's base student (same recipe, same Ray Train world size): pretrained once for the file, found in
    # the storage's cache by every stage command
    every_run = _runs(storage)
    for name in ("stages-generate", "stages-curate", "stages-train", "stages-eval"):
        (student,) = [r for r in every_run if r.info.run_name == "student"
                      and r.data.tags.get("mlflow.parentRunId") == runs[name].info.run_id]
        assert student.data.tags.get("student.cached") == "true", name
    # curate generated nothing: generate had stored every sample it needs
    curate_run = runs["stages-curate"]
    assert curate_run.data.metrics["total/teacher_tokens"] == 0
    assert runs["stages-generate"].data.metrics["total/teacher_tokens"] > 0
    assert {"after/max_2to3/avg_at_k", "before/max_2to3/avg_at_k"} <= set(
        next(r for r in _runs(storage) if r.info.run_name == "evaluate"
             and r.data.tags.get("mlflow.parentRunId") == runs["stages-eval"].info.run_id).data.metrics)


def _table(client: MlflowClient, run_id: str, name: str, tmp: Path) -> pd.DataFrame:
    """An MLflow table artifact (``log_table``) as a DataFrame."""
    folder = tmp / "artifacts" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    logged = json.loads(Path(client.download_artifacts(run_id, name, str(folder))).read_text())
    return pd.DataFrame(logged["data"], columns=logged["columns"])


def test_tune_reuses_generations(storage):
    # The store holds M samples of the quickstart's smoke-test winner only (the others answered the probe
    # once): the search distils from that teacher (a store short of M samples would be refused).
    runs = _runs(storage)
    (quickstart,) = [r for r in runs if r.info.run_name == "quickstart"]
    (smoke,) = [r for r in runs if r.info.run_name == "smoke_test"
                and r.data.tags.get("mlflow.parentRunId") == quickstart.info.run_id]
    ranking = _table(MlflowClient(f"sqlite:///{storage}/mlflow.db"), smoke.info.run_id, "teacher_ranking.json", storage)
    winner = ranking.loc[ranking["rank"] == 1, "teacher"].iloc[0]
    proc = _cli("tune", str(ROOT / "jobs/quickstart_tune.yaml"), f"storage={storage}",
                "questions.synthetic.num_questions=300", "student.base_rows=2000", "student.base_epochs=2",
                "student.base_chains=500",
                "eval.suites.0.synthetic.num_questions=60", "eval.suites.1.synthetic.num_questions=40",
                "eval.k=2", "train.epochs=3",
                f"teachers.0.name={winner}", f"teachers.0.engine.persona={winner}",
                "tune.search_space={selection.max_questions: [10, 60]}", cwd=storage)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "best trial" in proc.stdout
    runs = _runs(storage)
    (parent,) = [r for r in runs if r.info.run_name == "quickstart-tune-tune"]
    descendants = {parent.info.run_id}
    for _ in range(3):
        descendants |= {r.info.run_id for r in runs if r.data.tags.get("mlflow.parentRunId") in descendants}
    trials = [r for r in runs if r.info.run_id in descendants and r.info.run_name.startswith("trial-")]
    assert len(trials) == 2
    assert all("score" in t.data.metrics for t in trials)
    # max_questions caps the questions sampled, as in a job: one whose samples are all wrong adds no row
    questions = sorted(t.data.metrics["corpus_questions"] for t in trials)
    assert all(0.9 * cap <= q <= cap for q, cap in zip(questions, [10, 60])), questions
    assert len({t.data.tags["ray_distill.corpus_sha256"] for t in trials}) == 2  # two different corpora
    assert (storage / "quickstart-tune" / "best_job.yaml").exists()
    assert all(t.data.metrics["dev_questions"] == 150 for t in trials)  # scored on the dev suite
    # the search curated from the store only: not one teacher token generated
    assert parent.data.metrics["search/teacher_tokens_generated"] == 0
    # and distilled from the quickstart's cached base student (the same recipe and Ray Train world size)
    (student,) = [r for r in runs if r.info.run_name == "student"
                  and r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert student.data.tags.get("student.cached") == "true"
