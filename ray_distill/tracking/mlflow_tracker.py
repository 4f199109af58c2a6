"""MLflow tracker over ``MlflowClient`` (explicit run ids: safe across threads, Ray workers, Tune trials).

Params, tags and dataset sources pass through :func:`ray_distill.redact.redact_text` on their way to
MLflow: a signed URL or ``user:password@`` in the config never reaches the tracking server."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd

from ray_distill.redact import redact, redact_text, redact_value

logger = logging.getLogger(__name__)

_MAX_PARAM_LEN = 6000
_BATCH = 100

# MLflow's UI opens an experiment in its model-training view (runs, charts, models) rather than its GenAI
# view (traces, evaluations) by this tag.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
# Where MLflow shows a run's description (the run page's "Description" box, markdown).
DESCRIPTION_TAG = "mlflow.note.content"


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
    def log_model(self, model_dir: str, name: str, metrics: dict[str, float], corpus: pd.DataFrame | None = None,
                  corpus_source: str = "", corpus_metrics: dict[str, float] | None = None,
                  register_as: str | None = None) -> str | None: ...
    def set_description(self, text: str) -> None: ...
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

    def log_model(self, model_dir: str, name: str, metrics: dict[str, float], corpus: pd.DataFrame | None = None,
                  corpus_source: str = "", corpus_metrics: dict[str, float] | None = None,
                  register_as: str | None = None) -> str | None:
        return None

    def set_description(self, text: str) -> None:
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
        if exp is None:
            exp_id = client.create_experiment(experiment, artifact_location=artifact_location, tags=EXPERIMENT_TAGS)
        else:
            exp_id = exp.experiment_id
            for k, v in EXPERIMENT_TAGS.items():  # an experiment someone else made keeps its own kind
                if k not in exp.tags:
                    client.set_experiment_tag(exp_id, k, v)
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
        from mlflow.entities import DatasetInput, InputTag

        dataset = _dataset(df, source, name)
        tag = InputTag(key="mlflow.data.context", value=context)
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[tag])])

    def log_model(self, model_dir: str, name: str, metrics: dict[str, float], corpus: pd.DataFrame | None = None,
                  corpus_source: str = "", corpus_metrics: dict[str, float] | None = None,
                  register_as: str | None = None) -> str | None:
        """The ``save_pretrained`` checkpoint at ``model_dir`` (any storage URL) as an MLflow model of this run
        (transformers flavour, ``text-generation``; the weights are copied into the run's artifacts), with
        ``metrics`` linked to it and ``corpus_metrics`` linked to it and to the ``corpus`` dataset it was trained
        on. ``register_as``: also a new version of that registered model. Returns the model's ``models:/`` URI."""
        import mlflow
        import torch
        import transformers
        from mlflow.entities import Metric

        from ray_distill.models import loadable

        # pinned by hand: MLflow's default requirements for a checkpoint path import torchvision
        requirements = [f"transformers=={transformers.__version__}", f"torch=={torch.__version__.split('+')[0]}"]
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.tracking_uri)  # Model.log writes through MLflow's fluent client
        # created here, in this run's experiment (MLflow's fluent call would use the process's active one)
        model = self.client.create_logged_model(self.experiment_id, name=name, source_run_id=self.run_id,
                                                params={"source": redact(model_dir)}, model_type="student")
        try:
            with loadable(model_dir) as (path, _):
                info = mlflow.transformers.log_model(
                    path, name=name, task="text-generation", run_id=self.run_id, model_id=model.model_id,
                    registered_model_name=register_as, pip_requirements=requirements,
                    model_card=student_card(path))
        finally:
            mlflow.set_tracking_uri(previous)
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0, model_id=info.model_id, run_id=self.run_id)
                 for k, v in metrics.items() if v is not None]
        if corpus is not None:
            dataset = _dataset(corpus, corpus_source, "curated_corpus")
            items += [Metric(k, float(v), now, 0, model_id=info.model_id, dataset_name=dataset.name,
                             dataset_digest=dataset.digest, run_id=self.run_id)
                      for k, v in (corpus_metrics or {}).items() if v is not None]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + _BATCH])
        logger.info("student logged as MLflow model %s%s", info.model_uri,
                    f" (registered: {register_as} v{info.registered_model_version})" if register_as else "")
        return info.model_uri

    def set_description(self, text: str) -> None:
        self.set_tags({DESCRIPTION_TAG: text})

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


def _dataset(df: pd.DataFrame, source: str, name: str):
    """An MLflow dataset of ``df`` read from ``source`` (credentials masked)."""
    import warnings

    import mlflow.data

    with warnings.catch_warnings():
        # library noise: MLflow registers its local-file dataset source for two schemes and then warns, for
        # every local path, that it "can be interpreted in multiple ways: LocalArtifactDatasetSource,
        # LocalArtifactDatasetSource" (the same class twice); the source it picks is the right one
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        return mlflow.data.from_pandas(_jsonable(df), source=redact(source), name=name)


def student_card(path: str):
    """The model card logged with a student: the checkpoint's own ``README.md`` where it has one, else a short
    card of ours. Passing one stops MLflow from looking a local checkpoint path up on the Hugging Face Hub as
    if it were a repository id (a warning per logged model); with no license declared, MLflow still notes in
    the job's log file that it found none, which is true of a student trained here."""
    from huggingface_hub import ModelCard

    readme = os.path.join(path, "README.md")
    if os.path.isfile(readme):
        return ModelCard.load(readme)
    return ModelCard("---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags: [ray-distill]\n"
                     "license: other\n---\n# A student distilled by ray-distill\n\nFine-tuned on the curated corpus "
                     "logged with this model (dataset `curated_corpus`); its scores are the model's metrics.\n")


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


