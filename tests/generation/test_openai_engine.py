"""OpenAIEngine: retries, token counts and key hygiene against a small stdlib HTTP server on loopback
(``openai_stub``, see conftest.py); the test against a real vLLM server is test_openai_vllm_server.py."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time

import pytest

from ray_distill.config import EngineConfig, SamplingConfig
from ray_distill.generation.engines import build_engine, question_messages, resolve_api_key
from ray_distill.generation.openai_engine import backoff_delay, estimate_tokens, parse_retry_after

SECRET = "sk-test-0123456789abcdef"


def _cfg(base_url: str, **kw) -> EngineConfig:
    return EngineConfig(kind="openai", model="stub", base_url=base_url, api_key_env="STUB_API_KEY",
                        retry_backoff_s=0.01, **kw)


def test_backoff_grows_with_jitter_and_honours_retry_after():
    for attempt in range(4):
        delays = [backoff_delay(attempt, 1.0) for _ in range(200)]
        assert 2**attempt / 2 <= min(delays) < max(delays) <= 2**attempt
    assert backoff_delay(10, 1.0) <= 60 and backoff_delay(0, 0.1, retry_after_s=5) == 5
    # the server's word replaces the backoff (also a shorter one), capped like it
    assert backoff_delay(5, 1.0, retry_after_s=0.25) == 0.25 and backoff_delay(0, 1.0, 3600, cap_s=90) == 90
    assert 45 <= backoff_delay(20, 1.0, cap_s=90) <= 90


def test_retry_after_in_milliseconds_seconds_and_http_date():
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)  # 'Tue, 14 Nov 2023 22:13:27 GMT'
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25  # the finer one wins
    assert parse_retry_after({"retry-after": "12"}) == 12.0 and parse_retry_after({"retry-after": " 0.5 "}) == 0.5
    assert parse_retry_after({"retry-after": date}, now=now) == 7.0
    assert parse_retry_after({"retry-after": email.utils.formatdate(now - 30, usegmt=True)}, now=now) == 0.0
    for junk in ({}, {"retry-after": ""}, {"retry-after": "soon"}, {"retry-after": "-3"}, {"retry-after-ms": "nan"},
                 {"retry-after": "Tue, 14 Nov 2023 22:13:27"}):  # a date without its zone: not RFC 9110
        assert parse_retry_after(junk, now=now) is None, junk
    assert parse_retry_after({"retry-after-ms": "x", "retry-after": "2"}) == 2.0


def _retry_gap(server) -> float:
    """Seconds between the server's 429 reply and the next request's arrival."""
    return server.times[1][0] - server.times[0][1]


@pytest.mark.parametrize("form, headers, low, high", [
    ("seconds", lambda n: {"Retry-After": "1"}, 0.95, 3.0),
    ("milliseconds", lambda n: {"retry-after-ms": "300", "Retry-After": "1"}, 0.28, 0.9),  # not the 1 s
    ("HTTP date", lambda n: {"Retry-After": email.utils.formatdate(time.time() + 2, usegmt=True)}, 0.9, 3.5),
    ("over the cap", lambda n: {"Retry-After": "3600"}, 0.28, 2.0),  # max_retry_wait_s=0.3 below
])
def test_429_waits_as_long_as_the_server_says_in_each_form(openai_stub, monkeypatch, form, headers, low, high):
    monkeypatch.setenv("STUB_API_KEY", SECRET)
    with openai_stub(fail_first=1, fail_headers=headers) as server:
        engine = build_engine(_cfg(server.base_url, max_retries=2, max_retry_wait_s=0.3 if "cap" in form else 120))
        ((c,),) = engine.generate([question_messages("1+2")], SamplingConfig(), [[5]])
    assert c["finish_reason"] == "stop" and engine.retries == 1 and len(server.requests) == 2
    assert low <= _retry_gap(server) <= high, (form, _retry_gap(server))  # own backoff here: ~0.01 s


def test_a_reply_without_usage_is_counted_not_free(openai_stub, monkeypatch, caplog, tiny_student_path):
    monkeypatch.setenv("STUB_API_KEY", SECRET)
    text = "<think>12+30 (seed 3)</think>\\boxed{3}"
    with openai_stub(usage=False) as server:
        engine = build_engine(_cfg(server.base_url))
        ((c,),) = engine.generate([question_messages("12+30")], SamplingConfig(), [[3]])
        exact = build_engine(_cfg(server.base_url, tokenizer=tiny_student_path))
        ((d,),) = exact.generate([question_messages("12+30")], SamplingConfig(), [[3]])
    assert c["text"] == d["text"] == text and engine.counted == exact.counted == 1
    assert c["num_tokens"] == estimate_tokens(text) == 13 and c["prompt_tokens"] == estimate_tokens("12+30") == 2
    assert d["num_tokens"] == len(exact.tokenizer.encode(text, add_special_tokens=False)) > 0
    assert "sends no token usage" in caplog.text
    assert estimate_tokens("") == 0 and estimate_tokens("ab") == 1 and estimate_tokens("日本") == 2  # 6 bytes


def test_ray_data_gives_an_openai_actor_several_batches_at_once():
    from ray_distill.generation.actor import AsyncGenerateBatch, GenerateBatch, batch_class

    cfg = _cfg("http://h/v1")
    assert batch_class(cfg) is AsyncGenerateBatch and cfg.max_concurrent_batches == 8
    assert batch_class(cfg.model_copy(update={"max_concurrent_batches": 0})) is GenerateBatch


def test_a_freed_slot_starts_the_next_request_of_any_batch(openai_stub, monkeypatch):
    """Two batches in flight on one engine with 2 slots: while batch A's slow request holds one slot, the
    other serves all of batch B, which ends long before A; never more than 2 requests in flight."""
    monkeypatch.setenv("STUB_API_KEY", SECRET)

    async def both(engine):
        done = {}

        async def run(name, questions):
            out = await engine.generate_async([question_messages(q) for q in questions], SamplingConfig(),
                                              [[i] for i in range(len(questions))])
            done[name] = time.monotonic()
            return out

        a, b = await asyncio.gather(run("a", ["slow", "1+1"]), run("b", [f"{i}+0" for i in range(6)]))
        return a, b, done

    with openai_stub(delay_s=lambda q: 2.0 if q == "slow" else 0.02) as server:
        engine = build_engine(_cfg(server.base_url, max_concurrency=2))
        start = time.monotonic()
        a, b, done = asyncio.run(both(engine))
    assert [c[0]["text"] for c in b] == [f"<think>{i}+0 (seed {i})</think>\\boxed{{3}}" for i in range(6)]  # in order
    assert a[0][0]["text"].startswith("<think>slow (seed 0)") and a[1][0]["text"].startswith("<think>1+1 (seed 1)")
    assert done["b"] < done["a"] - 0.5 and done["a"] - start >= 2.0  # B never waited for A's slow request
    events = sorted([(t0, 1) for t0, _ in server.times] + [(t1, -1) for _, t1 in server.times])
    assert max(__import__("itertools").accumulate(e for _, e in events)) == 2


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


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_stops_at_the_first_refusal_naming_the_variable_not_the_key(status, openai_stub, monkeypatch):
    from ray_distill.errors import KeyRefused, exit_code

    monkeypatch.setenv("STUB_API_KEY", SECRET)
    with openai_stub(fail_first=100, fail_status=status) as server:  # its body echoes the Authorization header
        engine = build_engine(_cfg(server.base_url, max_retries=3, max_concurrency=1))
        with pytest.raises(KeyRefused, match=rf"stub at http://127.0.0.1:\d+/v1 answered {status} \(\w+Error\) to "
                           "the key in STUB_API_KEY") as err:
            engine.generate([question_messages("1+2"), question_messages("3+4")], SamplingConfig(), [[1, 2], [3]])
    assert len(server.requests) == 1 and engine.retries == 0  # nothing retried, nothing more sent
    assert SECRET not in str(err.value) and exit_code(err.value) == 11
    # an actor runs several batches on one event loop: after the refusal, none of them sends another request
    with openai_stub(fail_first=100, fail_status=status) as server:
        engine = build_engine(_cfg(server.base_url, max_concurrency=1))

        async def batches():
            return await asyncio.gather(*(engine.generate_async([question_messages(f"{b}+{i}") for i in range(3)],
                                                                SamplingConfig(), [[i] for i in range(3)])
                                          for b in range(4)), return_exceptions=True)

        results = asyncio.run(batches())
    assert all(isinstance(r, KeyRefused) for r in results) and len(server.requests) == 1


def test_error_rate_is_certain_once_enough_of_the_window_failed():
    from ray_distill.generation.openai_engine import ErrorRate

    rate = ErrorRate(0.5, 4)  # 2 failures of the first 4 requests stop, whatever the other two do
    assert [rate.add(e) for e in ("", "NotFoundError: no model", "")] == [False, False, False]
    assert rate.add("NotFoundError: no model")
    assert rate.describe() == "2 of its first 4 requests failed (2 x NotFoundError)"
    late = ErrorRate(0.5, 2)
    assert [late.add(e) for e in ("", "", "E: x", "E: x", "E: x")] == [False] * 5  # past the window: never
    assert not any(ErrorRate(None, 1).add("E: x") for _ in range(3))  # stop_error_rate: null
    assert ErrorRate(0.7, 10).limit == 7  # not 8 (0.7 x 10 is 7.000000000000001 in floating point)


def test_an_engine_whose_first_requests_fail_stops_the_job_in_one_line(openai_stub, monkeypatch):
    """A wrong model name (404 to every request, not retried): the engine stops once half of its first 8 requests
    have failed, naming the engine and the error, without the key; exit code 12."""
    from ray_distill.errors import EngineFailing, exit_code

    monkeypatch.setenv("STUB_API_KEY", SECRET)
    with openai_stub(fail_first=100, fail_status=404) as server:  # its body echoes the Authorization header
        engine = build_engine(_cfg(server.base_url, max_concurrency=1, error_window=8, stop_error_rate=0.5))
        with pytest.raises(EngineFailing, match=r"stub at http://127.0.0.1:\d+/v1: 4 of its first 4 requests failed "
                           r"\(4 x NotFoundError\), the last: NotFoundError: .*check the model name") as err:
            engine.generate([question_messages(f"{i}+1") for i in range(20)], SamplingConfig(),
                            [[i] for i in range(20)])
    assert len(server.requests) == 4  # stopped before it sent the other 16
    assert SECRET not in str(err.value) and exit_code(err.value) == 12 and "\n" not in str(err.value)
    # a few failures among the first requests are rejected samples, the batch goes on
    with openai_stub(fail_first=3, fail_status=404) as server:
        engine = build_engine(_cfg(server.base_url, max_concurrency=1, error_window=8, stop_error_rate=0.5))
        out = engine.generate([question_messages(f"{i}+1") for i in range(10)], SamplingConfig(),
                              [[i] for i in range(10)])
    assert [bool(c["error"]) for (c,) in out] == [True] * 3 + [False] * 7


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
    with pytest.raises(ValueError, match="NAME of an environment variable") as err:
        EngineConfig(kind="openai", model="m", base_url="http://h/v1", api_key_env=SECRET)
    assert SECRET not in str(err.value)


KEY_SHAPED = ["hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "gsk_1a2B3c4D5e6F7g8H9i0JkLmNoPqRsTuVwXyZ", "fw_3ZkQ9xV2mNpL8rTb",
              "sk-proj-Ab12Cd34Ef56Gh78", "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6", "AKIAIOSFODNN7EXAMPLE", "0123456789012345678901"]


@pytest.mark.parametrize("value", KEY_SHAPED)
def test_a_key_pasted_into_api_key_env_is_refused_without_echoing_it(value, tmp_path):
    """In the model, through a job file and through an override (also a number, as YAML reads an all-digit key):
    the one-line error says what went wrong and holds no part of the value."""
    from ray_distill.config import ConfigError, load_config

    job = tmp_path / "job.yaml"
    job.write_text("name: j\nstorage: out\nteachers: [{name: t, engine: {kind: openai, model: m, "
                   f"base_url: 'http://h/v1', api_key_env: {value}}}}}]\n")
    errors = []
    with pytest.raises(ValueError) as err:
        EngineConfig(kind="openai", model="m", base_url="http://h/v1", api_key_env=value)
    errors.append(str(err.value))
    with pytest.raises(ConfigError) as err:
        load_config(str(job))
    errors.append(str(err.value))
    with pytest.raises(ConfigError) as err:
        load_config(str(job), [f"teachers.0.engine.api_key_env={value}"])
    errors.append(str(err.value))
    for msg in errors:
        assert "a key seems to have been pasted in place of a variable name" in msg and "api_key_env" in msg
        assert not any(value[i:i + 6] in msg for i in range(len(value) - 5)), msg  # not even a 6-character piece
    assert "\n" not in errors[1]


@pytest.mark.parametrize("name", ["TEACHER_API_KEY", "OPENAI_API_KEY", "HF_TOKEN", "FIREWORKS_API_KEY", "K2", "GROQ"])
def test_variable_names_are_accepted(name):
    assert EngineConfig(kind="openai", model="m", base_url="http://h/v1", api_key_env=name).api_key_env == name
    with pytest.raises(ValueError, match="NAME of an environment variable"):  # names as people write them only
        EngineConfig(kind="openai", model="m", base_url="http://h/v1", api_key_env=name.lower())
