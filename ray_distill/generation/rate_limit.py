"""One request and token rate for all engine actors of a teacher (engine ``openai``): a hosted API limits
requests and tokens per minute per key, whatever number of actors sends them.

    limit = RateLimit(requests_per_minute=600, tokens_per_minute=200_000, now=time.monotonic())
    wait_s = limit.acquire(time.monotonic())      # before a request: seconds to wait, the slot is then booked
    limit.spend(prompt + completion, time.monotonic())   # after its reply: the tokens it used
    limit.pause(retry_after_s, time.monotonic())  # a 429's Retry-After: no actor sends before then

:class:`RateLimit` is plain, clock-free logic (every call takes ``now``); :func:`limiter_for` gives an
engine the async front of one: inside a Ray cluster a named actor per (endpoint, model, key variable,
limits), :class:`RateLimitActor`, that every engine actor of the teacher shares (created by the first that
asks, again by the next one if its owner went away); outside Ray an in-process one.

Requests: a token bucket of ``requests_per_minute / 60`` per second that holds at most one second's worth
(at least one request), so a cluster never bursts past what a per-second enforcement of the limit allows.
A request that finds it empty books the next free time (the level goes below zero) and waits until then.
Tokens: the same bucket for ``tokens_per_minute``; a request waits until its level is back at zero, and
its reply's prompt + completion tokens are taken afterwards (what a reply will cost is unknown before),
so the rate holds over time and overshoots by at most the tokens of the requests in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time

from ray_distill.config import EngineConfig

logger = logging.getLogger(__name__)


class TokenBucket:
    """``per_minute`` units per minute, at most ``burst_s`` seconds' worth (at least 1) held at once; the level
    may go below zero (units booked ahead). Times are seconds on any monotonic clock."""

    def __init__(self, per_minute: float, now: float = 0.0, burst_s: float = 1.0):
        if per_minute <= 0:
            raise ValueError(f"per_minute must be > 0, got {per_minute}")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def ready_at(self, now: float) -> float:
        """When the level is back at zero or above (``now`` when it is)."""
        self._refill(now)
        return max(now, self.stamp + max(0.0, -self.level) / self.rate)

    def reserve(self, amount: float, now: float) -> float:
        """Take ``amount`` units at ``now`` (booking ahead if the level is short); when they are covered."""
        self._refill(now)
        self.level -= amount
        return self.ready_at(now)

    def take(self, amount: float, now: float) -> None:
        """Take ``amount`` units already used (a reply's tokens)."""
        self._refill(now)
        self.level -= amount


class RateLimit:
    """Requests and tokens per minute (either may be None: no limit), and a pause a server asked for."""

    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None,
                 now: float = 0.0):
        self.requests = TokenBucket(requests_per_minute, now) if requests_per_minute else None
        self.tokens = TokenBucket(tokens_per_minute, now) if tokens_per_minute else None
        self.paused_until = now

    def acquire(self, now: float) -> float:
        """Book one request: the seconds to wait from ``now`` before sending it."""
        at = max(now, self.paused_until)
        if self.tokens is not None:
            at = max(at, self.tokens.ready_at(at))
        if self.requests is not None:
            at = max(at, self.requests.reserve(1, at))
        return at - now

    def spend(self, tokens: int, now: float) -> None:
        """A reply used ``tokens`` (prompt + completion)."""
        if self.tokens is not None and tokens > 0:
            self.tokens.take(tokens, now)

    def pause(self, seconds: float, now: float) -> None:
        """Send nothing for ``seconds`` (a 429's Retry-After applies to every actor of the key)."""
        self.paused_until = max(self.paused_until, now + max(0.0, seconds))


class RateLimitActor:
    """:class:`RateLimit` on the actor's monotonic clock; callers get relative waits."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.limit = RateLimit(requests_per_minute, tokens_per_minute, now=time.monotonic())

    def acquire(self) -> float:
        return self.limit.acquire(time.monotonic())

    def spend(self, tokens: int) -> None:
        self.limit.spend(tokens, time.monotonic())

    def pause(self, seconds: float) -> None:
        self.limit.pause(seconds, time.monotonic())


class LocalLimiter:
    """One process's limiter (no Ray cluster): the engine awaits :meth:`acquire` before each request."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.limit = RateLimit(requests_per_minute, tokens_per_minute, now=time.monotonic())

    async def acquire(self) -> None:
        await asyncio.sleep(self.limit.acquire(time.monotonic()))

    def spend(self, tokens: int) -> None:
        self.limit.spend(tokens, time.monotonic())

    def pause(self, seconds: float) -> None:
        self.limit.pause(seconds, time.monotonic())


class SharedLimiter:
    """The engine's front of the named :class:`RateLimitActor` ``name`` (created if absent, num_cpus=0)."""

    def __init__(self, name: str, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.name, self.args = name, (requests_per_minute, tokens_per_minute)
        self.actor = self._get()

    def _get(self):
        import ray

        cls = ray.remote(num_cpus=0)(RateLimitActor)
        # Owned by the engine actor that created it; if that one goes (its pool shrank), the next call here
        # finds the name free and creates it anew.
        return cls.options(name=self.name, get_if_exists=True).remote(*self.args)

    async def acquire(self) -> None:
        from ray.exceptions import RayActorError

        try:
            wait_s = await self.actor.acquire.remote()
        except RayActorError:
            self.actor = self._get()
            wait_s = await self.actor.acquire.remote()
        await asyncio.sleep(wait_s)

    def spend(self, tokens: int) -> None:
        self.actor.spend.remote(tokens)  # not awaited: the next acquire is ordered after it on the actor

    def pause(self, seconds: float) -> None:
        self.actor.pause.remote(seconds)


def limiter_name(cfg: EngineConfig) -> str:
    """The shared limiter of ``cfg``: one per endpoint, served model, key variable and limits."""
    ident = [cfg.base_url, cfg.model, cfg.api_key_env, cfg.requests_per_minute, cfg.tokens_per_minute]
    return "ray_distill.rate_limit." + hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]


def limiter_for(cfg: EngineConfig) -> LocalLimiter | SharedLimiter | None:
    """The limiter an ``openai`` engine awaits before each request: None without limits; the cluster-wide
    named actor when this process is connected to Ray; else an in-process one."""
    if cfg.requests_per_minute is None and cfg.tokens_per_minute is None:
        return None
    import ray

    if ray.is_initialized():
        return SharedLimiter(limiter_name(cfg), cfg.requests_per_minute, cfg.tokens_per_minute)
    return LocalLimiter(cfg.requests_per_minute, cfg.tokens_per_minute)
