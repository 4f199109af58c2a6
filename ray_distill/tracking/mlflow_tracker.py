"""MLflow tracker over ``MlflowClient`` (explicit run ids: safe across threads, Ray workers, Tune trials).

Params, tags and dataset sources pass through :func:`ray_distill.redact.redact_text` on their way to
MLflow: a signed URL or ``user:password@`` in the config never reaches the tracking server."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd

from ray_distill.redact import redact, redact_text, redact_value

logger = logging.getLogger(__name__)

_MAX_PARAM_LEN = 6000
_BATCH = 100


@dataclass(frozen=True)
class TrackerHandle:
    """Picklable address of one MLflow run."""

    tracking_uri: str
    run_id: str


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None: ...
    def log_dict(self, data: Any, artifact_file: str) -> None: ...
    def log_table(self, df: pd.DataFrame, artifact_file: str) -> None: ...
    def log_figure(self, figure: Any, artifact_file: str) -> None: ...
    def log_dataset(self, df: pd.DataFrame, name: str, source: str, context: str = "training") -> None: ...
    def child(self, name: str, tags: dict[str, str] | None = None) -> contextlib.AbstractContextManager[Tracker]: ...
    def handle(self) -> TrackerHandle | None: ...
    def end(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """The do-nothing twin of :class:`MLflowTracker`."""

    run_id = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        pass

    def log_dict(self, data: Any, artifact_file: str) -> None:
        pass

    def log_table(self, df: pd.DataFrame, artifact_file: str) -> None:
        pass

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        pass

    def log_dataset(self, df: pd.DataFrame, name: str, source: str, context: str = "training") -> None:
        pass

    @contextlib.contextmanager
    def child(self, name: str, tags: dict[str, str] | None = None) -> Iterator[NullTracker]:
        yield self

    def handle(self) -> TrackerHandle | None:
        return None

    def end(self, status: str = "FINISHED") -> None:
        pass


class MLflowTracker:
    """Logs to one MLflow run; :meth:`child` opens a nested run (``mlflow.parentRunId`` tag)."""

    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri)
        self.experiment_id = self.client.get_run(run_id).info.experiment_id

    @classmethod
    def create(
        cls, tracking_uri: str, experiment: str, run_name: str, tags: dict[str, str] | None = None,
        artifact_location: str | None = None, parent_run_id: str | None = None,
    ) -> MLflowTracker:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=artifact_location)
        all_tags = {"mlflow.runName": run_name, **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(exp_id, tags=all_tags, run_name=run_name)
        return cls(tracking_uri, run.info.run_id)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        # redacted before the length cap, which could cut a URI between its password and its '@'
        items = [Param(k, _param_value(redact_value(v))) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + _BATCH])

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, redact_text(str(v)))

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        if os.path.isdir(local_path):
            self.client.log_artifacts(self.run_id, local_path, artifact_path)
        else:
            self.client.log_artifact(self.run_id, local_path, artifact_path)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_text(self.run_id, json.dumps(data, indent=2, default=str), artifact_file)

    def log_table(self, df: pd.DataFrame, artifact_file: str) -> None:
        self.client.log_table(self.run_id, data=df, artifact_file=artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_dataset(self, df: pd.DataFrame, name: str, source: str, context: str = "training") -> None:
        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        dataset = mlflow.data.from_pandas(_jsonable(df), source=redact(source), name=name)
        tag = InputTag(key="mlflow.data.context", value=context)
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[tag])])

    @contextlib.contextmanager
    def child(self, name: str, tags: dict[str, str] | None = None) -> Iterator[MLflowTracker]:
        exp_name = self.client.get_experiment(self.experiment_id).name
        child = MLflowTracker.create(self.tracking_uri, exp_name, name, tags, parent_run_id=self.run_id)
        try:
            yield child
        except BaseException:
            child.end("FAILED")
            raise
        child.end("FINISHED")

    def handle(self) -> TrackerHandle:
        return TrackerHandle(self.tracking_uri, self.run_id)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def tracker_from_handle(handle: TrackerHandle | None) -> Tracker:
    """Reopen a run in another process (a Ray Train worker, a Tune trial); None → NullTracker."""
    return MLflowTracker(handle.tracking_uri, handle.run_id) if handle else NullTracker()


def default_tracking_uri(storage: str) -> str:
    """``sqlite:///<storage>/mlflow.db`` for local storage; ``sqlite:///<cwd>/mlflow.db`` otherwise."""
    from ray_distill.environment import default_tracking_uri as default

    return default(storage, os.getcwd())


def start_tracker(
    enabled: bool, tracking_uri: str | None, experiment: str, storage: str, run_name: str,
    tags: dict[str, str] | None = None,
) -> Tracker:
    """The job's parent run (or a NullTracker when tracking is off). ``tracking_uri`` None: the SQLite
    default (:func:`default_tracking_uri`); the environment is read by the caller
    (:func:`ray_distill.environment.resolve_tracking`), not here."""
    if not enabled:
        return NullTracker()
    uri = tracking_uri or default_tracking_uri(storage)
    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(os.path.abspath(uri.removeprefix("sqlite:///"))), exist_ok=True)
    artifacts = f"{storage.rstrip('/')}/mlartifacts"
    if "://" not in artifacts:
        artifacts = os.path.abspath(artifacts)
    tracker = MLflowTracker.create(uri, experiment, run_name, tags, artifact_location=artifacts)
    logger.info("MLflow run %s in %s (experiment %r)", tracker.run_id, redact(uri), experiment)
    return tracker


def _param_value(v: Any) -> str:
    s = json.dumps(v, default=str) if isinstance(v, (list, dict)) else str(v)
    return s[:_MAX_PARAM_LEN]


def _jsonable(df: pd.DataFrame) -> pd.DataFrame:
    """MLflow's dataset schema inference wants flat columns: nested values become JSON strings."""
    out = df.copy()
    for col in out.columns:
        if out[col].map(lambda v: isinstance(v, (list, dict))).any():
            out[col] = out[col].map(lambda v: json.dumps(v, default=str))
    return out


