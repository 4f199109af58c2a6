"""MLflow tracker against a real local SQLite store."""

import pandas as pd
from mlflow import MlflowClient

from ray_distill.tracking import NullTracker, start_tracker, tracker_from_handle


def test_parent_and_nested_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = start_tracker(True, None, "exp", str(tmp_path / "out"), "job", tags={"k": "v"})
    t.log_params({"a": 1, "nested": [1, 2]})
    with t.child("stage") as c:
        c.log_metrics({"rows": 5}, step=1)
        c.log_dataset(pd.DataFrame({"messages": [[{"role": "user", "content": "1+1"}]]}), "corpus", "out/c.parquet")
    tracker_from_handle(t.handle()).log_metrics({"from_worker": 2.0})
    t.end()
    client = MlflowClient(t.handle().tracking_uri)
    assert t.handle().tracking_uri == f"sqlite:///{tmp_path}/out/mlflow.db"
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("exp").experiment_id])}
    assert set(runs) == {"job", "stage"}
    assert runs["stage"].data.tags["mlflow.parentRunId"] == runs["job"].info.run_id
    assert runs["stage"].data.metrics["rows"] == 5
    assert runs["job"].data.metrics["from_worker"] == 2.0
    assert runs["job"].data.params["nested"] == "[1, 2]"
    assert runs["stage"].inputs.dataset_inputs[0].dataset.name == "corpus"


def test_failed_child_is_marked_failed(tmp_path):
    t = start_tracker(True, None, "exp", str(tmp_path), "job")
    try:
        with t.child("boom"):
            raise ValueError("x")
    except ValueError:
        pass
    client = MlflowClient(t.handle().tracking_uri)
    (boom,) = [r for r in client.search_runs([t.experiment_id]) if r.info.run_name == "boom"]
    assert boom.info.status == "FAILED"


def test_null_tracker_is_silent():
    t = NullTracker()
    with t.child("x") as c:
        c.log_metrics({"a": 1})
    assert t.handle() is None and tracker_from_handle(None).run_id is None


def test_params_tags_and_dataset_sources_reach_mlflow_redacted(tmp_path):
    t = start_tracker(True, None, "exp", str(tmp_path), "job")
    t.log_params({"questions.path": "https://u:pw@h/q.jsonl?token=t0k", "suites": ["s3://b/k?X-Amz-Signature=5ig"],
                  "train.lr": 0.01})
    t.set_tags({"source": "https://h/x?sig=5ig"})
    t.log_dataset(pd.DataFrame({"a": [1]}), "corpus", "https://u:pw@h/corpus.parquet")
    t.end()
    run = MlflowClient(t.handle().tracking_uri).get_run(t.run_id)
    assert run.data.params == {"questions.path": "https://***@h/q.jsonl?token=***",
                               "suites": '["s3://b/k?X-Amz-Signature=***"]', "train.lr": "0.01"}
    assert run.data.tags["source"] == "https://h/x?sig=***"
    text = str(run.inputs.dataset_inputs[0].dataset.source)
    assert "corpus.parquet" in text and "pw" not in text
