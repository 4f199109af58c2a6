"""Where a job's outputs, its MLflow tracking and its Ray cluster come from, each with its source.

Precedence is the same everywhere: what the job file (or an override, or a command-line flag) sets
explicitly, then the environment's conventions, then a local default.

- **storage**: an URL or an absolute path is used as given. A relative path is resolved against
  ``$RAY_DISTILL_STORAGE`` when that is set (a root every node reaches: ``s3://bucket/prefix`` or a shared
  mount), otherwise against the working directory — except under Ray's Jobs API, where the working
  directory is Ray's unpacked copy of the shipped code (``runtime_resources/working_dir_files/…``,
  read-only for practical purposes and on one node only): there a relative ``storage`` without
  ``RAY_DISTILL_STORAGE`` is refused, and no path inside that copy is ever accepted. On a cluster of more
  than one node, a path relative to the driver's working directory is refused too (:func:`check_shared_storage`).
- **MLflow**: ``tracking.tracking_uri`` > ``MLFLOW_TRACKING_URI`` > ``sqlite:///<storage>/mlflow.db``
  (MLflow's own default is a SQLite file in the working directory, which under Ray's Jobs API would be
  inside that copy); ``tracking.experiment`` > ``MLFLOW_EXPERIMENT_NAME`` > ``ray-distill``.
- **Ray**: ``ray.address`` in the job file > ``RAY_ADDRESS`` > a local cluster; for ``submit``:
  ``--address`` > ``RAY_API_SERVER_ADDRESS`` > ``RAY_ADDRESS``.

Every function here is pure: it gets the environment and the working directory as arguments, and
raises :class:`~ray_distill.config.ConfigError` with one line naming what to set.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ray_distill.errors import ConfigError
from ray_distill.redact import redact  # noqa: F401  (re-exported: callers import it from here)

STORAGE_ENV = "RAY_DISTILL_STORAGE"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "ray-distill"
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for a job's entrypoint

# Where Ray unpacks a job's working_dir / py_modules on a node: <temp dir>/session_…/runtime_resources/…
_RAY_PACKAGE = re.compile(r"(^|/)runtime_resources/[a-z_]+_files(/|$)")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")

SOURCE_CONFIG = "as configured"
SOURCE_CWD = "relative to the working directory"
SOURCE_STORAGE_ENV = f"relative to {STORAGE_ENV}"


def is_url(path: str) -> bool:
    """``s3://…``, ``gs://…``, ``memory://…`` — anything with a scheme except ``file://``."""
    return bool(_URL.match(path)) and not path.startswith("file://")


def in_ray_package(path: str) -> bool:
    """Whether ``path`` lies inside a package Ray unpacked for a job (its ``working_dir`` copy)."""
    return bool(_RAY_PACKAGE.search(path.replace(os.sep, "/")))


def in_ray_job(environ: Mapping[str, str], cwd: str) -> bool:
    """Whether this process is a job's entrypoint under Ray's Jobs API (or runs inside its working dir)."""
    return bool(environ.get(RAY_JOB_ENV)) or in_ray_package(cwd)


def resolve_storage(storage: str, environ: Mapping[str, str], cwd: str) -> tuple[str, str]:
    """``(storage, source)``: the absolute path or URL outputs go to, and where it came from."""
    storage = storage.strip()
    if not storage:
        raise ConfigError("storage is empty: give a path or an fsspec URL")
    if is_url(storage):
        return storage.rstrip("/"), SOURCE_CONFIG
    path = storage.removeprefix("file://")
    if os.path.isabs(path):
        resolved, source = os.path.normpath(path), SOURCE_CONFIG
    elif root := environ.get(STORAGE_ENV, "").strip():
        if is_url(root):
            return posixpath.join(root.rstrip("/"), posixpath.normpath(path)).rstrip("/"), SOURCE_STORAGE_ENV
        root = root.removeprefix("file://")
        if not os.path.isabs(root):
            raise ConfigError(f"{STORAGE_ENV}={root!r} must be an absolute path or a URL")
        resolved, source = os.path.normpath(os.path.join(root, path)), SOURCE_STORAGE_ENV
    elif in_ray_job(environ, cwd):
        raise ConfigError(
            f"storage {storage!r} is relative and this runs under Ray's Jobs API, whose working directory is "
            f"Ray's temporary copy of the code: set storage to shared storage (s3://…, a shared mount) or "
            f"{STORAGE_ENV} on the cluster")
    else:
        resolved, source = os.path.normpath(os.path.join(cwd, path)), SOURCE_CWD
    if in_ray_package(resolved):
        raise ConfigError(f"storage {resolved!r} is inside Ray's copy of the job's working directory: set "
                           f"storage to shared storage (s3://…, a shared mount) or {STORAGE_ENV}")
    return resolved, source


def check_shared_storage(storage: str, source: str, nodes: int) -> None:
    """On a cluster of several nodes, a path relative to the driver's working directory is on one node only."""
    if nodes > 1 and source == SOURCE_CWD:
        raise ConfigError(
            f"storage {storage!r} is relative to the driver's working directory, which the other "
            f"{nodes - 1} node(s) of this Ray cluster cannot reach: set storage to shared storage "
            f"(s3://…, a shared mount) or {STORAGE_ENV}")


@dataclass(frozen=True)
class TrackingTarget:
    """The MLflow store and experiment a job logs to, and where each came from."""

    uri: str
    uri_source: str
    experiment: str
    experiment_source: str
    enabled: bool = True

    def describe(self) -> str:
        """``MLflow: http://host:5000 (from MLFLOW_TRACKING_URI), experiment 'x' (default)``; no credentials."""
        if not self.enabled:
            return "MLflow: off (tracking.enabled: false)"
        return (f"MLflow: {redact(self.uri)} ({_from(self.uri_source)}), experiment {self.experiment!r} "
                f"({_from(self.experiment_source)})")


# MLflow 3's UI opens in its GenAI view (an empty traces dashboard for a training job) whatever the experiment's
# kind; this query parameter of its pages opens the "Model training" view
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def run_url(uri: str, experiment_id: str, run_id: str, ui: str = "http://127.0.0.1:5000") -> tuple[str | None, str]:
    """Where MLflow's UI shows a run, ``(the command that serves the UI or None, the run's page)``: a tracking
    server's own address; for a local store (SQLite, a folder), ``mlflow ui`` on it and the page on that
    command's default address, served by one process (``--workers 1``: MLflow's default of 4 uvicorn workers starts 4
    servers for one reader; on a busy 2-core host its supervisor killed workers still importing and the UI was not
    up after a minute, one process answered in 42 s). No credentials."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"
    if uri.startswith(("http://", "https://")):
        return None, f"{redact(uri).rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {redact(uri)} --workers 1", f"{ui}/{page}"


def _from(source: str) -> str:
    return source if source == "default" else f"from {source}"


def default_tracking_uri(storage: str, cwd: str) -> str:
    """``sqlite:///<storage>/mlflow.db`` for local storage; ``sqlite:///<cwd>/mlflow.db`` for remote storage."""
    if is_url(storage):
        return "sqlite:///" + os.path.join(cwd, "mlflow.db")
    return "sqlite:///" + os.path.join(storage.removeprefix("file://"), "mlflow.db")


def resolve_tracking(
    tracking_uri: str | None, experiment: str | None, storage: str, environ: Mapping[str, str], cwd: str,
    cluster: bool = False, enabled: bool = True,
) -> TrackingTarget:
    """Explicit config > ``MLFLOW_TRACKING_URI`` / ``MLFLOW_EXPERIMENT_NAME`` > the local default.

    ``cluster``: the job runs under Ray's Jobs API or on several nodes. The default SQLite store then has to
    live in ``storage`` (a location the nodes share); with remote storage there is no such file and an MLflow
    server is required. ``enabled=False`` (``tracking.enabled: false``): nothing to resolve."""
    if not enabled:
        return TrackingTarget("", "tracking.enabled", "", "tracking.enabled", enabled=False)
    if tracking_uri:
        uri, uri_source = tracking_uri, "tracking.tracking_uri"
    elif environ.get(TRACKING_URI_ENV, "").strip():
        uri, uri_source = environ[TRACKING_URI_ENV].strip(), TRACKING_URI_ENV
    else:
        if cluster and is_url(storage):
            raise ConfigError(
                f"no MLflow tracking URI and storage {storage!r} is remote: a cluster job needs an MLflow server; "
                f"set {TRACKING_URI_ENV} on the cluster or tracking.tracking_uri")
        uri, uri_source = default_tracking_uri(storage, cwd), "default"
    local = local_store_path(uri, cwd)
    if local is not None and in_ray_package(local):
        raise ConfigError(f"MLflow store {local!r} ({uri_source}) is inside Ray's copy of the job's working "
                           f"directory: set {TRACKING_URI_ENV} or tracking.tracking_uri to an MLflow server")
    if experiment:
        exp, exp_source = experiment, "tracking.experiment"
    elif environ.get(EXPERIMENT_ENV, "").strip():
        exp, exp_source = environ[EXPERIMENT_ENV].strip(), EXPERIMENT_ENV
    else:
        exp, exp_source = DEFAULT_EXPERIMENT, "default"
    return TrackingTarget(uri, uri_source, exp, exp_source)


def local_store_path(uri: str, cwd: str) -> str | None:
    """The file or folder a file-based MLflow URI writes to (``sqlite:///x.db``, ``file:./mlruns``, a plain
    path), absolute; None for servers and databases elsewhere."""
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        # sqlite:////abs and sqlite:///rel: SQLAlchemy reads what follows the third slash as the path
        return path if os.path.isabs(path) else os.path.normpath(os.path.join(cwd, path))
    if uri.startswith("file:"):
        path = uri.removeprefix("file://") if uri.startswith("file://") else uri.removeprefix("file:")
        return os.path.normpath(os.path.join(cwd, path))
    if "://" in uri or uri in ("databricks", "uc") or uri.startswith(("databricks:", "uc:")):
        return None
    return os.path.normpath(os.path.join(cwd, uri))


def ray_address(configured: str | None, environ: Mapping[str, str]) -> tuple[str | None, str]:
    """The cluster a driver joins: ``ray.address`` > ``RAY_ADDRESS`` > ``(None, "local")`` (start one).

    A dashboard URL (``http://HEAD:8265``, what ``ray job submit`` takes) cannot be joined by a driver."""
    if configured:
        address, source = configured.strip(), "ray.address"
    elif environ.get("RAY_ADDRESS", "").strip():
        address, source = environ["RAY_ADDRESS"].strip(), "RAY_ADDRESS"
    else:
        return None, "local"
    if address.startswith(("http://", "https://")):
        raise ConfigError(
            f"{source}={address} is a dashboard (Jobs API) URL: submit the job there (ray-distill submit, "
            f"ray job submit), or set {source} to the cluster's GCS address HOST:6379 to drive it from here")
    return address, source


def submission_address(flag: str | None, environ: Mapping[str, str]) -> tuple[str, str]:
    """The Jobs API a job is submitted to: ``--address`` > ``RAY_API_SERVER_ADDRESS`` > ``RAY_ADDRESS``."""
    for value, source in ((flag, "--address"), (environ.get("RAY_API_SERVER_ADDRESS"), "RAY_API_SERVER_ADDRESS"),
                          (environ.get("RAY_ADDRESS"), "RAY_ADDRESS")):
        if value and value.strip():
            return value.strip(), source
    raise ConfigError("--address (or RAY_ADDRESS) is required, e.g. http://HEAD:8265")


def job_env_vars(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``runtime_env.env_vars`` Ray gave this job's entrypoint ({} outside a Ray job)."""
    raw = environ.get(RAY_JOB_ENV)
    if not raw:
        return {}
    try:
        return (json.loads(raw).get("runtime_env") or {}).get("env_vars") or {}
    except (ValueError, AttributeError):
        return {}


