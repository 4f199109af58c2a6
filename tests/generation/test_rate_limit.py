"""One request/token rate for all engine actors of a teacher: the bucket logic on a hand-driven clock, then
two Ray actors with an openai engine each against the stub server, sharing one named limiter actor."""

from __future__ import annotations

import time

import pytest

from ray_distill.config import EngineConfig
from ray_distill.generation.rate_limit import RateLimit, TokenBucket, limiter_for, limiter_name


def test_requests_per_minute_spaces_requests_after_a_one_second_burst():
    limit = RateLimit(requests_per_minute=120, now=0.0)  # 2 per second, at most 2 at once
    assert [limit.acquire(0.0) for _ in range(5)] == [0.0, 0.0, 0.5, 1.0, 1.5]  # booked ahead, in order
    assert limit.acquire(1.0) == pytest.approx(1.0)  # the 6th: its slot is at 2.0
    assert limit.acquire(10.0) == 0.0 and limit.acquire(10.0) == 0.0 and limit.acquire(10.0) == 0.5  # refilled, capped


def test_tokens_per_minute_holds_requests_until_the_spent_tokens_are_paid_back():
    limit = RateLimit(tokens_per_minute=600, now=0.0)  # 10 tokens a second, at most 10 held
    assert limit.acquire(0.0) == 0.0
    limit.spend(30, 0.0)  # the reply cost 30: level 10 - 30 = -20
    assert limit.acquire(0.0) == pytest.approx(2.0) and limit.acquire(1.0) == pytest.approx(1.0)
    assert limit.acquire(2.0) == 0.0
    limit.spend(0, 2.0)
    limit.spend(-5, 2.0)  # nothing counted: no change
    assert limit.acquire(2.0) == 0.0


def test_both_limits_and_a_server_pause():
    limit = RateLimit(requests_per_minute=60, tokens_per_minute=60, now=0.0)  # 1 request/s, 1 token/s
    assert limit.acquire(0.0) == 0.0
    limit.spend(4, 0.0)  # tokens: 1 - 4 = -3 -> back at zero at 3.0
    assert limit.acquire(0.0) == pytest.approx(3.0)  # the token bucket decides
    limit.pause(10.0, 1.0)  # a 429 with Retry-After: 10 at t=1
    assert limit.acquire(1.0) == pytest.approx(10.0)
    limit.pause(2.0, 1.0)  # a shorter pause never shortens a longer one
    assert limit.paused_until == 11.0


def test_bucket_refuses_a_zero_rate_and_keeps_at_least_one_unit():
    with pytest.raises(ValueError, match="per_minute"):
        TokenBucket(0)
    bucket = TokenBucket(6, now=0.0)  # 0.1 per second: still one unit at once
    assert bucket.capacity == 1.0 and bucket.reserve(1, 0.0) == 0.0 and bucket.reserve(1, 0.0) == pytest.approx(10.0)


def test_no_limits_no_limiter_and_one_name_per_endpoint_model_key_and_limits():
    cfg = EngineConfig(kind="openai", model="m", base_url="http://h/v1", api_key_env="K")
    assert limiter_for(cfg) is None
    limited = cfg.model_copy(update={"requests_per_minute": 60.0})
    assert limiter_name(limited) == limiter_name(limited.model_copy(update={"max_concurrency": 3}))
    assert limiter_name(limited) != limiter_name(limited.model_copy(update={"model": "other"}))
    assert limiter_name(limited) != limiter_name(limited.model_copy(update={"tokens_per_minute": 1e5}))


def test_two_engine_actors_of_a_teacher_share_one_rate(ray_local, openai_stub):
    """Two Ray actors, 3 requests each at once, 120 requests/minute between them: the server sees 2 at once,
    then one every 0.5 s (~2 s in all); with a limiter per actor it would see all 6 within ~0.5 s."""
    import ray
    from pydantic import SecretStr

    from ray_distill.config import SamplingConfig
    from ray_distill.generation.engines import build_engine, question_messages

    @ray.remote(num_cpus=0)
    class Engine:
        def __init__(self, cfg: dict, key: SecretStr):
            self.engine = build_engine(EngineConfig.model_validate(cfg), key)

        def ready(self) -> bool:
            return True

        def generate(self, tag: str) -> list[str]:
            out = self.engine.generate([question_messages(f"{tag}{i}") for i in range(3)], SamplingConfig(),
                                       [[i] for i in range(3)])
            return [c[0]["finish_reason"] for c in out]

    with openai_stub() as server:
        cfg = EngineConfig(kind="openai", model="stub", base_url=server.base_url, api_key_env="STUB_API_KEY",
                           max_concurrency=3, requests_per_minute=120)
        actors = [Engine.remote(cfg.model_dump(), SecretStr("sk-rate-limit-test-key")) for _ in range(2)]
        ray.get([a.ready.remote() for a in actors])  # both engines (and the shared limiter) built
        start = time.monotonic()  # the bucket holds at most 2 requests now (one second's worth)
        results = ray.get([a.generate.remote(tag) for a, tag in zip(actors, "ab")], timeout=60)
    assert results == [["stop"] * 3] * 2
    arrivals = sorted(t0 for t0, _ in server.times)  # the server's time.monotonic(): one clock with `start`
    assert len(arrivals) == 6, arrivals
    # After the burst of 2, one slot every 0.5 s from `start` on: the k-th request (k >= 2) cannot reach the server
    # before start + 0.5 (k - 1), however late a loaded host delivers any of them (so no gap between two arrivals is
    # checked: a late one shortens the gap after it). With a limiter per actor (4 at once) the 3rd and 4th would
    # arrive at ~start and the last at ~start + 0.5.
    assert all(arrivals[k] - start >= 0.5 * (k - 1) - 0.01 for k in range(2, 6)), [t - start for t in arrivals]
