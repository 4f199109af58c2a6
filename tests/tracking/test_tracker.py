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


def test_experiment_opens_in_the_model_training_view(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    mine = start_tracker(True, None, "exp", str(tmp_path), "job")
    assert client.get_experiment(mine.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    theirs = client.create_experiment("theirs", tags={"mlflow.experimentKind": "genai_development"})
    start_tracker(True, None, "theirs", str(tmp_path), "job")  # an experiment someone else made keeps its kind
    assert client.get_experiment(theirs).tags["mlflow.experimentKind"] == "genai_development"


def test_student_is_a_logged_registered_transformers_model(tmp_path, tiny_student_path):
    """The checkpoint becomes an MLflow model of the run (transformers flavour) that MLflow loads back as a
    text-generation pipeline; eval metrics link to the model, the training loss also to the corpus dataset."""
    import mlflow

    t = start_tracker(True, None, "exp", str(tmp_path), "job")
    corpus = pd.DataFrame({"messages": [[{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}]]})
    uri = t.log_model(tiny_student_path, "student", {"arith/avg_at_k": 0.25}, corpus=corpus,
                      corpus_source=f"{tmp_path}/corpus/corpus.parquet", corpus_metrics={"train_loss": 1.5},
                      register_as="tiny-student")
    t.set_description("**ray-distill run**")
    t.end()
    client = MlflowClient(t.handle().tracking_uri)
    (model,) = client.search_logged_models([t.experiment_id])
    assert uri == f"models:/{model.model_id}" and model.source_run_id == t.run_id and model.name == "student"
    linked = {m.key: m for m in model.metrics}
    assert linked["arith/avg_at_k"].value == 0.25 and linked["arith/avg_at_k"].dataset_name is None
    assert linked["train_loss"].value == 1.5 and linked["train_loss"].dataset_name == "curated_corpus"
    (version,) = client.search_model_versions("name='tiny-student'")
    assert version.run_id == t.run_id and int(version.version) == 1 and version.source == uri
    assert client.get_run(t.run_id).data.tags["mlflow.note.content"] == "**ray-distill run**"
    mlflow.set_tracking_uri(t.handle().tracking_uri)
    try:
        generate = mlflow.transformers.load_model("models:/tiny-student/1")
    finally:
        mlflow.set_tracking_uri(None)
    out = generate("1+1=", max_new_tokens=3, do_sample=False)
    assert out[0]["generated_text"].startswith("1+1=") and len(out[0]["generated_text"]) > 4
