"""Where outputs, MLflow runs and the Ray cluster come from: explicit config > environment conventions >
local default, and never Ray's copy of a job's working directory (ray_distill.environment; pure functions,
plus the CLI's one-line refusals before any work)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ray_distill.cli import app
from ray_distill.config import ConfigError, load_config
from ray_distill.environment import (
    SOURCE_CONFIG,
    SOURCE_CWD,
    SOURCE_STORAGE_ENV,
    check_shared_storage,
    in_ray_job,
    in_ray_package,
    job_env_vars,
    local_store_path,
    ray_address,
    redact,
    resolve_storage,
    resolve_tracking,
    submission_address,
)

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "jobs" / "quickstart.yaml")
PKG = "/tmp/ray/session_2026/runtime_resources/working_dir_files/_ray_pkg_0123abcd"
JOB_ENV = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {"env_vars": {"A": "1"}}})}


# ----------------------------------------------------------------------------- Ray job detection


def test_ray_job_is_detected_by_its_env_or_its_working_dir():
    assert in_ray_package(PKG) and in_ray_package(PKG + "/outputs/mlflow.db")
    assert in_ray_package("/tmp/ray/session_1/runtime_resources/py_modules_files/_ray_pkg_x")
    assert not in_ray_package("/home/me/runtime_resources") and not in_ray_package("/data/outputs")
    assert in_ray_job(JOB_ENV, "/home/me") and in_ray_job({}, PKG)
    assert not in_ray_job({}, "/home/me")
    assert job_env_vars(JOB_ENV) == {"A": "1"} and job_env_vars({}) == {}
    assert job_env_vars({"RAY_JOB_CONFIG_JSON_ENV_VAR": "not json"}) == {}


# ----------------------------------------------------------------------------- storage


def test_storage_urls_and_absolute_paths_are_used_as_given():
    for env, cwd in (({}, "/home/me"), (JOB_ENV, PKG), ({"RAY_DISTILL_STORAGE": "/shared"}, "/home/me")):
        assert resolve_storage("s3://bucket/x/", env, cwd) == ("s3://bucket/x", SOURCE_CONFIG)
        assert resolve_storage("/data/out", env, cwd) == ("/data/out", SOURCE_CONFIG)
        assert resolve_storage("file:///data/out", env, cwd) == ("/data/out", SOURCE_CONFIG)


def test_relative_storage_resolves_against_the_storage_root_then_the_working_dir():
    assert resolve_storage("outputs", {}, "/home/me") == ("/home/me/outputs", SOURCE_CWD)
    assert resolve_storage("outputs", {"RAY_DISTILL_STORAGE": "/shared/rd"}, "/home/me") == (
        "/shared/rd/outputs", SOURCE_STORAGE_ENV)
    assert resolve_storage("./a/../outputs", {"RAY_DISTILL_STORAGE": "s3://b/rd/"}, "/x") == (
        "s3://b/rd/outputs", SOURCE_STORAGE_ENV)
    # under Ray's Jobs API the storage root is what keeps outputs out of the working-dir package
    assert resolve_storage("outputs", {**JOB_ENV, "RAY_DISTILL_STORAGE": "/shared/rd"}, PKG)[0] == "/shared/rd/outputs"
    with pytest.raises(ConfigError, match="absolute path or a URL"):
        resolve_storage("outputs", {"RAY_DISTILL_STORAGE": "rel/root"}, "/home/me")


@pytest.mark.parametrize("env,cwd", [(JOB_ENV, "/home/me"), ({}, PKG), ({**JOB_ENV, "RAY_DISTILL_STORAGE": " "}, PKG)])
def test_relative_storage_under_ray_jobs_is_refused_in_one_line(env, cwd):
    with pytest.raises(ConfigError) as err:
        resolve_storage("outputs", env, cwd)
    msg = str(err.value)
    assert "Ray's Jobs API" in msg and "RAY_DISTILL_STORAGE" in msg and "storage" in msg and "\n" not in msg


def test_storage_is_never_inside_rays_working_dir_package():
    with pytest.raises(ConfigError, match="inside Ray's copy"):
        resolve_storage(PKG + "/outputs", {}, "/home/me")
    with pytest.raises(ConfigError, match="inside Ray's copy"):
        resolve_storage("outputs", {"RAY_DISTILL_STORAGE": PKG}, "/home/me")


def test_several_nodes_refuse_storage_relative_to_the_driver():
    check_shared_storage("/home/me/outputs", SOURCE_CWD, nodes=1)
    check_shared_storage("/shared/outputs", SOURCE_STORAGE_ENV, nodes=3)
    check_shared_storage("/mnt/nfs/outputs", SOURCE_CONFIG, nodes=3)  # an absolute path: a shared mount
    with pytest.raises(ConfigError, match=r"other 2 node\(s\).*RAY_DISTILL_STORAGE"):
        check_shared_storage("/home/me/outputs", SOURCE_CWD, nodes=3)


def test_load_config_resolves_storage_and_keeps_its_source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(QUICKSTART)
    assert cfg.storage == str(tmp_path / "outputs") and cfg.storage_source == SOURCE_CWD
    monkeypatch.setenv("RAY_DISTILL_STORAGE", str(tmp_path / "shared"))
    cfg = load_config(QUICKSTART)
    assert cfg.storage == str(tmp_path / "shared" / "outputs") and cfg.storage_source == SOURCE_STORAGE_ENV
    assert load_config(QUICKSTART, ["storage=s3://b/x"]).storage_source == SOURCE_CONFIG
    monkeypatch.delenv("RAY_DISTILL_STORAGE")
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    with pytest.raises(ConfigError, match=r"^.*quickstart\.yaml: storage 'outputs' is relative"):
        load_config(QUICKSTART)
    assert load_config(QUICKSTART, [f"storage={tmp_path}/abs"]).storage == f"{tmp_path}/abs"


# ----------------------------------------------------------------------------- MLflow


def test_tracking_precedence_config_then_environment_then_default():
    env = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_EXPERIMENT_NAME": "from-env"}
    t = resolve_tracking("http://explicit:5000", "explicit-exp", "/data/out", env, "/home/me")
    assert (t.uri, t.uri_source, t.experiment, t.experiment_source) == (
        "http://explicit:5000", "tracking.tracking_uri", "explicit-exp", "tracking.experiment")
    t = resolve_tracking(None, None, "/data/out", env, "/home/me")
    assert (t.uri, t.uri_source, t.experiment, t.experiment_source) == (
        "http://mlflow:5000", "MLFLOW_TRACKING_URI", "from-env", "MLFLOW_EXPERIMENT_NAME")
    t = resolve_tracking(None, None, "/data/out", {}, "/home/me")
    assert (t.uri, t.uri_source, t.experiment, t.experiment_source) == (
        "sqlite:////data/out/mlflow.db", "default", "ray-distill", "default")
    assert t.describe() == "MLflow: sqlite:////data/out/mlflow.db (default), experiment 'ray-distill' (default)"
    assert resolve_tracking(None, None, "s3://b/x", {}, "/home/me").uri == "sqlite:////home/me/mlflow.db"


def test_tracking_summary_names_the_source_and_hides_credentials():
    t = resolve_tracking(None, None, "/d", {"MLFLOW_TRACKING_URI": "https://user:s3cret@mlflow.example:443/"}, "/h")
    assert t.describe() == ("MLflow: https://***@mlflow.example:443/ (from MLFLOW_TRACKING_URI), "
                            "experiment 'ray-distill' (default)")
    assert "s3cret" not in t.describe()
    assert redact("postgresql://u:p@db/x") == "postgresql://***@db/x" and redact("http://h:5000") == "http://h:5000"


def test_cluster_jobs_never_put_the_sqlite_store_in_the_package_or_nowhere_shared():
    # remote storage and no server: nothing every node reaches can hold a SQLite file
    with pytest.raises(ConfigError, match="needs an MLflow server.*MLFLOW_TRACKING_URI"):
        resolve_tracking(None, None, "s3://b/x", {}, PKG, cluster=True)
    # local shared storage: the default store lives there
    assert resolve_tracking(None, None, "/shared/out", {}, PKG, cluster=True).uri == "sqlite:////shared/out/mlflow.db"
    # a relative SQLite/file URI under Ray's Jobs API would land in the package
    for uri in ("sqlite:///mlflow.db", "file:./mlruns", "mlruns"):
        with pytest.raises(ConfigError, match="inside Ray's copy"):
            resolve_tracking(uri, None, "/shared/out", {}, PKG)
    assert local_store_path("http://h:5000", PKG) is None and local_store_path("databricks", PKG) is None
    # tracking off: nothing to resolve, nothing refused
    off = resolve_tracking(None, None, "s3://b/x", {}, PKG, cluster=True, enabled=False)
    assert not off.enabled and off.describe() == "MLflow: off (tracking.enabled: false)"
    assert local_store_path("sqlite:////abs/m.db", PKG) == "/abs/m.db"


# ----------------------------------------------------------------------------- Ray addresses


def test_ray_address_precedence_and_dashboard_urls():
    assert ray_address("10.0.0.1:6379", {"RAY_ADDRESS": "10.0.0.2:6379"}) == ("10.0.0.1:6379", "ray.address")
    assert ray_address(None, {"RAY_ADDRESS": "10.0.0.2:6379"}) == ("10.0.0.2:6379", "RAY_ADDRESS")
    assert ray_address(None, {}) == (None, "local")
    assert ray_address(None, {"RAY_ADDRESS": "ray://head:10001"}) == ("ray://head:10001", "RAY_ADDRESS")
    with pytest.raises(ConfigError, match=r"RAY_ADDRESS=http://head:8265 is a dashboard .*HOST:6379"):
        ray_address(None, {"RAY_ADDRESS": "http://head:8265"})


def test_submission_address_precedence():
    env = {"RAY_ADDRESS": "http://a:8265", "RAY_API_SERVER_ADDRESS": "http://b:8265"}
    assert submission_address("http://flag:8265", env) == ("http://flag:8265", "--address")
    assert submission_address(None, env) == ("http://b:8265", "RAY_API_SERVER_ADDRESS")
    assert submission_address(None, {"RAY_ADDRESS": "http://a:8265"}) == ("http://a:8265", "RAY_ADDRESS")
    with pytest.raises(ConfigError, match="--address"):
        submission_address(None, {})


# ----------------------------------------------------------------------------- the CLI, before any work

runner = CliRunner()


def test_validate_says_where_storage_mlflow_and_ray_come_from(tmp_path):
    env = {"MLFLOW_TRACKING_URI": "http://user:pw@127.0.0.1:5999", "MLFLOW_EXPERIMENT_NAME": "exp-env",
           "RAY_DISTILL_STORAGE": str(tmp_path), "RAY_ADDRESS": "127.0.0.1:6399", "COLUMNS": "300"}
    result = runner.invoke(app, ["validate", QUICKSTART, "tracking.experiment=exp-cfg"], env=env)
    assert result.exit_code == 0, result.output
    assert f'"storage": "{tmp_path}/outputs"' in result.output
    assert f"storage: {tmp_path}/outputs (relative to RAY_DISTILL_STORAGE)" in result.output
    assert ("MLflow: http://***@127.0.0.1:5999 (from MLFLOW_TRACKING_URI), experiment 'exp-cfg' "
            "(from tracking.experiment)") in result.output
    assert "Ray: 127.0.0.1:6399 (from RAY_ADDRESS)" in result.output and "pw@" not in result.output
    # a dashboard URL in RAY_ADDRESS (set for `ray job submit`) is reported, not an error for validate
    env = {"RAY_ADDRESS": "http://127.0.0.1:8265", "COLUMNS": "300"}
    result = runner.invoke(app, ["validate", QUICKSTART], env=env)
    assert result.exit_code == 0 and "Ray: `run` here would stop: RAY_ADDRESS=http://127.0.0.1:8265 is a dashboard" \
        in result.output


@pytest.mark.parametrize("command", ["run", "tune", "ablate"])
def test_commands_refuse_a_dashboard_url_as_driver_address_in_one_line(command, tmp_path):
    result = runner.invoke(app, [command, QUICKSTART, f"storage={tmp_path}"],
                           env={"RAY_ADDRESS": "http://127.0.0.1:1", "COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    assert "RAY_ADDRESS=http://127.0.0.1:1 is a dashboard (Jobs API) URL" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # no MLflow store, nothing written


def test_run_under_a_ray_job_without_storage_root_stops_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", QUICKSTART], env={"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}", "COLUMNS": "400"})
    assert result.exit_code == 2 and "storage 'outputs' is relative" in result.output
    assert "RAY_DISTILL_STORAGE" in result.output and len(result.output.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_submit_takes_its_address_from_the_environment_after_the_flag(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    result = runner.invoke(app, ["submit", QUICKSTART])
    assert result.exit_code == 2 and "--address (or RAY_ADDRESS) is required" in result.output
    # Nothing listens on port 1: the address from RAY_ADDRESS is the one contacted.
    result = runner.invoke(app, ["submit", QUICKSTART], env={"RAY_ADDRESS": "http://127.0.0.1:1", "COLUMNS": "400"})
    assert result.exit_code == 6 and "127.0.0.1:1" in result.output  # the unreachable family (ray_distill.errors)


def test_the_chosen_jobs_api_address_wins_over_rays_environment_override(monkeypatch):
    # Ray's JobSubmissionClient would let RAY_ADDRESS replace the address it is given; ours does not.
    from ray_distill.submit import job_client

    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:2")
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    with pytest.raises(ConnectionError, match=r"http://127\.0\.0\.1:1\b"):
        job_client("http://127.0.0.1:1")
    assert "RAY_API_SERVER_ADDRESS" not in os.environ


def test_run_url_points_at_the_run_in_mlflows_ui():
    from ray_distill.environment import run_url

    view = "?workflowType=machine_learning"  # MLflow's "Model training" view, not its GenAI one
    assert run_url("http://mlflow:5000/", "3", "abc") == (None, f"http://mlflow:5000/#/experiments/3/runs/abc{view}")
    assert run_url("https://u:pw@mlflow.example/", "3", "abc")[1] == \
        f"https://***@mlflow.example/#/experiments/3/runs/abc{view}"
    assert run_url("sqlite:////data/out/mlflow.db", "1", "abc") == (
        "mlflow ui --backend-store-uri sqlite:////data/out/mlflow.db --workers 1",
        f"http://127.0.0.1:5000/#/experiments/1/runs/abc{view}")
