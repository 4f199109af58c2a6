"""OpenAIEngine: retries, token counts and key hygiene against a small stdlib HTTP server on loopback
(``openai_stub``, see conftest.py); the test against a real vLLM server is test_openai_vllm_server.py."""

from __future__ import annotations

import logging

import pytest

from ray_distill.config import EngineConfig, SamplingConfig
from ray_distill.generation.engines import build_engine, question_messages, resolve_api_key
from ray_distill.generation.openai_engine import backoff_delay

SECRET = "sk-test-0123456789abcdef"


def _cfg(base_url: str, **kw) -> EngineConfig:
    return EngineConfig(kind="openai", model="stub", base_url=base_url, api_key_env="STUB_API_KEY",
                        retry_backoff_s=0.01, **kw)


def test_backoff_grows_with_jitter_and_honours_retry_after():
    for attempt in range(4):
        delays = [backoff_delay(attempt, 1.0) for _ in range(200)]
        assert 2**attempt / 2 <= min(delays) < max(delays) <= 2**attempt
    assert backoff_delay(10, 1.0) <= 60 and backoff_delay(0, 0.1, retry_after_s=5) == 5


def test_retries_429_then_succeeds_with_usage_tokens_and_reasoning(openai_stub, monkeypatch, caplog):
    monkeypatch.setenv("STUB_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    with openai_stub(fail_first=2) as server:
        engine = build_engine(_cfg(server.base_url, max_retries=3))
        (out,) = engine.generate([question_messages("1+2")], SamplingConfig(temperature=0.5, max_tokens=64), [[42]])
    assert engine.retries == 2 and len(server.requests) == 3
    assert out == [{"text": "<think>1+2 (seed 42)</think>\\boxed{3}", "num_tokens": 11, "finish_reason": "stop",
                    "error": "", "prompt_tokens": 7}]
    body, auth = server.requests[-1]
    assert auth == f"Bearer {SECRET}"  # the key does reach the server...
    assert body["seed"] == 42 and body["n"] == 1 and body["max_completion_tokens"] == 64
    assert body["messages"] == question_messages("1+2") and body["temperature"] == 0.5
    assert "retry 2/3" in caplog.text and SECRET not in caplog.text  # ...and nowhere else


def test_gives_up_after_max_retries_with_an_error_completion_without_the_key(openai_stub, monkeypatch, caplog):
    monkeypatch.setenv("STUB_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    with openai_stub(fail_first=100, fail_status=503) as server:
        engine = build_engine(_cfg(server.base_url, max_retries=2, max_concurrency=2))
        out = engine.generate([question_messages("1+2"), question_messages("3+4")], SamplingConfig(), [[1, 2], [3]])
    assert len(server.requests) == 3 * 3 and engine.retries == 3 * 2
    flat = [c for per_prompt in out for c in per_prompt]
    assert [len(c) for c in out] == [2, 1] and all(c["finish_reason"] == "error" for c in flat)
    assert all(c["error"].startswith("InternalServerError after 3 attempts") for c in flat)
    assert "Bearer ***" in flat[0]["error"]  # the server echoed the key; the engine blanked it
    assert SECRET not in caplog.text and not any(SECRET in c["error"] for c in flat)


def test_client_errors_are_not_retried(openai_stub, monkeypatch):
    monkeypatch.setenv("STUB_API_KEY", SECRET)
    with openai_stub(fail_first=100, fail_status=400) as server:
        engine = build_engine(_cfg(server.base_url, max_retries=3))
        ((c,),) = engine.generate([question_messages("1+2")], SamplingConfig(), [[1]])
    assert len(server.requests) == 1 and c["error"].startswith("BadRequestError: ")


def test_missing_key_variable_fails_fast_naming_it_without_the_key(monkeypatch):
    monkeypatch.setenv("STUB_API_KEY", SECRET)
    cfg = _cfg("http://127.0.0.1:9/v1").model_copy(update={"api_key_env": "STUB_API_KEY_TYPO"})
    with pytest.raises(ValueError, match="variable STUB_API_KEY_TYPO named by api_key_env is not set") as err:
        build_engine(cfg)
    assert SECRET not in str(err.value)
    assert resolve_api_key(_cfg("x")).get_secret_value() == SECRET and SECRET not in repr(resolve_api_key(_cfg("x")))


def test_config_needs_endpoint_and_model_and_refuses_a_key_as_variable_name():
    with pytest.raises(ValueError, match="needs 'base_url'"):
        EngineConfig(kind="openai", model="m")
    with pytest.raises(ValueError, match="needs 'model'"):
        EngineConfig(kind="openai", base_url="http://h/v1")
    with pytest.raises(ValueError, match="name of an environment variable") as err:
        EngineConfig(kind="openai", model="m", base_url="http://h/v1", api_key_env=SECRET)
    assert SECRET not in str(err.value)
