"""Credentials in URIs never reach a console, a log line or MLflow: the one redaction function."""

import logging

import pytest

from ray_distill.redact import RedactingFilter, is_secret_param, redact, redact_params, redact_text


@pytest.mark.parametrize("uri, expected", [
    ("https://user:secret@host:5000/x", "https://***@host:5000/x"),
    ("postgresql://u:p@db/mlflow", "postgresql://***@db/mlflow"),
    ("https://ghp_abc123@github.com/o/r", "https://***@github.com/o/r"),
    ("https://h/q.jsonl?token=abc&page=2", "https://h/q.jsonl?token=***&page=2"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4&X-Amz-Credential=AK%2F1&X-Amz-Signature=f00d"
     "&X-Amz-Security-Token=IQo", "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4&X-Amz-Credential=***"
     "&X-Amz-Signature=***&X-Amz-Security-Token=***"),
    ("https://acct.blob.core.windows.net/c/f?sv=2022&sig=Zm9v%3D&se=2030", "https://acct.blob.core.windows.net/c/f?sv=2022&sig=***&se=2030"),
    ("https://storage.googleapis.com/b/o?X-Goog-Signature=ab12", "https://storage.googleapis.com/b/o?X-Goog-Signature=***"),
    ("http://h/api?access_token=t&API_KEY=k&x-api-key=z", "http://h/api?access_token=***&API_KEY=***&x-api-key=***"),
    ("https://h/a#frag?token=x", "https://h/a#frag?token=***"),  # no false sense of safety after a fragment
])
def test_redact_hides_userinfo_and_credential_parameters(uri, expected):
    assert redact(uri) == expected


@pytest.mark.parametrize("uri", [
    "http://mlflow.internal:5000", "s3://bucket/runs/a", "sqlite:////tmp/x/mlflow.db", "/data/q.jsonl",
    "https://h/q.jsonl?page=2&split=train", "hf://datasets/org/name@main/x.parquet", "user@example.com",
    "https://h/x?monkey=1&tokens=5",
])
def test_redact_keeps_what_holds_no_credential(uri):
    assert redact(uri) == uri


def test_secret_param_names():
    assert all(map(is_secret_param, ["token", "SIG", "X-Amz-Signature", "client_secret", "db_password", "api-key"]))
    assert not any(map(is_secret_param, ["page", "split", "revision", "tokens", "monkey"]))


def test_redact_text_finds_every_uri_in_a_message():
    msg = "cannot read https://a:b@h/q.jsonl (retry s3://x/y?X-Amz-Signature=zz failed); see http://h:1/ok"
    assert redact_text(msg) == ("cannot read https://***@h/q.jsonl (retry s3://x/y?X-Amz-Signature=*** failed); "
                                "see http://h:1/ok")


def test_redact_params_masks_values_nested_and_leaves_others():
    params = {"tracking.tracking_uri": "https://u:p@mlflow:5000", "questions.paths": ["https://h/a?sig=1", "/b"],
              "train.lr": 0.001, "name": "job"}
    assert redact_params(params) == {"tracking.tracking_uri": "https://***@mlflow:5000",
                                     "questions.paths": ["https://h/a?sig=***", "/b"], "train.lr": 0.001, "name": "job"}


def test_logging_filter_masks_rendered_records(caplog):
    log = logging.getLogger("ray_distill.test_redact")
    log.addFilter(RedactingFilter())
    try:
        with caplog.at_level(logging.INFO, logger=log.name):
            log.info("reading %s (%d rows)", "https://u:pw@h/q.jsonl?token=t0k", 3)
    finally:
        log.filters.clear()
    assert caplog.messages == ["reading https://***@h/q.jsonl?token=*** (3 rows)"]
    assert "pw" not in caplog.text and "t0k" not in caplog.text


# ----------------------------------------------------------------------------- secret values, not only URIs

KEY = "hf_Canary0Redact9Value"


@pytest.mark.parametrize("name", ["HF_TOKEN", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                  "MLFLOW_TRACKING_PASSWORD", "GOOGLE_APPLICATION_CREDENTIALS", "DB_PASSWD", "HFTOKEN",
                                  "my_api_key", "GITHUB_PAT", "AZURE_STORAGE_SAS_TOKEN", "SERVICE_APIKEY"])
def test_secret_looking_variable_names(name):
    from ray_distill.redact import is_secret_name

    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["TOKENIZERS_PARALLELISM", "RAY_AUTH_TOKEN_PATH", "SSL_KEY_FILE", "HF_HOME", "PATH",
                                  "PWD", "RAY_AUTH_MODE", "MLFLOW_EXPERIMENT_NAME", "KEYBOARD", "MONKEY_PATCH", ""])
def test_names_that_only_look_alike(name):
    from ray_distill.redact import is_secret_name

    assert not is_secret_name(name)


def test_values_of_secret_variables_are_masked_anywhere_in_a_text(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", KEY)
    monkeypatch.setenv("RD_SHORT_TOKEN", "abc")  # too short to mask safely
    monkeypatch.setenv("RD_SETTING", "not-a-secret-value")
    text = f"401 for Bearer {KEY} (abc, not-a-secret-value); again: {KEY}"
    assert redact_text(text) == "401 for Bearer *** (abc, not-a-secret-value); again: ***"
    assert redact_params({"x": [f"k={KEY}"]}) == {"x": ["k=***"]}
    monkeypatch.delenv("HF_TOKEN")  # read at each call
    assert redact_text(text) == text


def test_a_registered_key_is_masked_whatever_its_variable(monkeypatch):
    from ray_distill.redact import register_secret, secret_values

    value = "tk-registered-key-4f1e2d"
    assert redact_text(f"key {value}") == f"key {value}"
    register_secret(value)
    register_secret("short")  # ignored
    assert redact_text(f"key {value}") == "key ***" and "short" not in secret_values()


def test_forwarded_worker_lines_go_through_the_same_redaction(monkeypatch):
    """Ray's own printer of worker output on the driver (ray._private.worker.print_worker_logs), wrapped by
    runtime.redact_forwarded_logs: a worker's line with a key or a credential URI is printed masked; the
    unwrapped printer prints it as it came (what reached the console before)."""
    import io

    from ray._private import worker

    from ray_distill.redact import redact_log_batch
    from ray_distill.runtime import redact_forwarded_logs

    monkeypatch.setenv("HF_TOKEN", KEY)
    batch = {"ip": "10.0.0.1", "pid": 4242, "task_name": "GenerateBatch", "is_err": False, "localhost": "10.0.0.1",
             "lines": [f"engine says {KEY}", "GET https://u:pw@h/q.jsonl?token=t0k"], "actor_name": ""}
    assert redact_log_batch(batch)["lines"] == ["engine says ***", "GET https://***@h/q.jsonl?token=***"]
    assert redact_log_batch({"lines": []}) == {"lines": []} and batch["lines"][0].endswith(KEY)  # input untouched
    original = worker.print_worker_logs
    while hasattr(original, "original") or hasattr(original, "wrapped"):  # Ray's own printer, whatever an earlier
        original = getattr(original, "original", None) or original.wrapped  # command of this process wrapped
    monkeypatch.setattr(worker, "print_worker_logs", original)  # restored after the test
    # a ray.init(log_to_driver=False) earlier in this process (tests/conftest.py's ray_local) leaves Ray's printer off
    monkeypatch.setattr(worker, "_worker_logs_enabled", True)
    before = io.StringIO()
    worker.print_worker_logs(batch, before)
    assert KEY in before.getvalue()
    assert redact_forwarded_logs() and redact_forwarded_logs()  # wraps once, idempotent
    assert worker.print_worker_logs is not original and worker.print_worker_logs.redacting
    after = io.StringIO()
    worker.print_worker_logs(batch, after)
    assert "engine says ***" in after.getvalue() and "https://***@h/q.jsonl?token=***" in after.getvalue()
    assert KEY not in after.getvalue() and "pw@" not in after.getvalue() and "GenerateBatch pid=4242" in after.getvalue()


def test_the_placement_group_cleaners_state_api_warnings_are_dropped_from_forwarded_lines():
    """A local cluster runs no dashboard, so Ray Train's PlacementGroupCleaner warns every second that the State
    API does not answer (redact.drop_cleaner_noise): those lines go, the cleaner's other lines and every other
    actor's lines stay, the batch given is not changed."""
    from ray_distill.redact import drop_cleaner_noise

    noise = ("Failed to query Ray Train Controller actor state. State API may be temporarily unavailable. "
             "Continuing to monitor.")
    cleaner = {"pid": 7, "actor_name": "PlacementGroupCleaner", "lines": [noise, "removed placement group", noise]}
    assert drop_cleaner_noise(cleaner)["lines"] == ["removed placement group"] and len(cleaner["lines"]) == 3
    other = {"pid": 8, "actor_name": "RayTrainWorker", "lines": [noise]}
    assert drop_cleaner_noise(other) == other
    assert drop_cleaner_noise({"pid": "raylet", "lines": ["x"]}) == {"pid": "raylet", "lines": ["x"]}
