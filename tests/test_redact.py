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
