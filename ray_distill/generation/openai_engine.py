"""Teacher generation through any OpenAI-compatible endpoint (a vLLM server, a hosted API).

    cfg = EngineConfig(kind="openai", model="qwq-32b", base_url="http://host:8000/v1", api_key_env="TEACHER_API_KEY",
                       requests_per_minute=500, tokens_per_minute=400_000)
    engine = OpenAIEngine(cfg, engines.resolve_api_key(cfg))   # the key from $TEACHER_API_KEY
    engine.generate(messages, sampling, seeds)                 # or: await engine.generate_async(...)

One request per seed (``n=1``, ``seed`` passed to the server), each with its own timeout. At most
``max_concurrency`` requests are in flight per engine, across every batch it is running: the slot a finished
request frees starts the next waiting one, of any batch (Ray Data gives an actor several batches at once,
``max_concurrent_batches``), so no batch waits for another's slowest request; results keep their order.

429, 408/409, 5xx and connection errors are retried with exponential backoff and jitter; a server's
``retry-after-ms`` (milliseconds) or ``Retry-After`` (seconds or an HTTP date) replaces the backoff, both
capped at ``max_retry_wait_s``, and a 429's wait holds every actor of the teacher. With
``requests_per_minute`` / ``tokens_per_minute``, all engine actors of a teacher share one limiter
(:mod:`.rate_limit`). A request that still fails becomes an error :class:`Completion`; the batch goes on.
A 401/403 is different: the key is refused, every request would be, so the engine raises
:class:`~ray_distill.errors.KeyRefused` at the first one and the job stops (exit 11) before it sends more. So
does an engine whose first ``error_window`` requests fail at a rate of ``stop_error_rate`` or more
(:class:`~ray_distill.errors.EngineFailing`, exit 12: a wrong model name, a URL that is no OpenAI endpoint): it
stops as soon as that rate is certain, naming the commonest error (:class:`ErrorRate`).

Token counts come from the response ``usage``; a server that sends none has the reply counted by
``tokenizer`` (hub id or path), or else estimated at one token per 3 bytes of UTF-8 (:func:`estimate_tokens`:
English runs ~4 characters a token, so the estimate errs high), so those tokens count against the budget too.

The API key is read from the environment variable *named* by ``api_key_env`` and travels as a
:class:`pydantic.SecretStr`; it is never logged, never part of a store key or of MLflow params, and is
blanked out of every error message (and registered with :mod:`ray_distill.redact` in the engine's process).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Mapping

import openai
from pydantic import SecretStr

from ray_distill.config import EngineConfig, SamplingConfig
from ray_distill.errors import EngineFailing, KeyRefused
from ray_distill.generation.rate_limit import limiter_for
from ray_distill.generation.types import FINISH_LENGTH, FINISH_STOP, Completion, check_lengths, error_completion
from ray_distill.models import last_user_content
from ray_distill.redact import redact_text, register_secret

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0  # the default cap of backoff_delay (engines pass max_retry_wait_s)
RETRY_STATUS = frozenset({408, 409, 429})  # and every 5xx
NO_KEY = "EMPTY"  # what the client sends when no key is configured (vLLM's convention)
BYTES_PER_TOKEN = 3  # estimate_tokens: fewer than a real tokenizer's ~4 characters of English, so it errs high


def backoff_delay(attempt: int, base_s: float, retry_after_s: float | None = None, cap_s: float = MAX_BACKOFF_S) -> float:
    """Delay before retry ``attempt`` (0-based): the server's ``retry_after_s`` when it sent one, else
    ``base * 2**attempt`` with its upper half jittered; never more than ``cap_s``."""
    if retry_after_s is not None:
        return min(max(retry_after_s, 0.0), cap_s)
    ceiling = min(cap_s, base_s * 2**attempt)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def refused(err: BaseException) -> bool:
    """The server refused the credentials (401 Unauthorized, 403 Forbidden): no retry can succeed."""
    return isinstance(err, openai.APIStatusError) and err.status_code in (401, 403)


def is_retryable(err: BaseException) -> bool:
    if isinstance(err, openai.APIConnectionError):  # includes timeouts
        return True
    return isinstance(err, openai.APIStatusError) and (err.status_code in RETRY_STATUS or err.status_code >= 500)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds a server asks to wait (None when it says nothing usable): ``retry-after-ms`` (milliseconds, what
    OpenAI's API sends), else ``Retry-After`` in seconds or as an HTTP date (RFC 9110; a past date is 0).
    ``now``: the current Unix time (default: the clock's)."""
    try:
        ms = float(headers.get("retry-after-ms", ""))
        if math.isfinite(ms) and ms >= 0:
            return ms / 1000
    except ValueError:
        pass
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_after_seconds(err: BaseException, now: float | None = None) -> float | None:
    """:func:`parse_retry_after` of an error response's headers (None for other errors)."""
    if not isinstance(err, openai.APIStatusError):
        return None
    return parse_retry_after(err.response.headers, now)


def estimate_tokens(text: str) -> int:
    """Tokens of ``text`` without a tokenizer: one per :data:`BYTES_PER_TOKEN` bytes of UTF-8, rounded up."""
    return -(-len(text.encode("utf-8")) // BYTES_PER_TOKEN)


def chat_text(message) -> str:
    """The assistant text of a chat message; a reasoning server's separate chain of thought (vLLM's
    ``reasoning``, DeepSeek-style ``reasoning_content``) is put back in front as ``<think>…</think>``."""
    extra = message.model_extra or {}
    reasoning = extra.get("reasoning") or extra.get("reasoning_content")
    content = message.content or ""
    return f"<think>{reasoning}</think>{content}" if reasoning else content


class ErrorRate:
    """The failures among an engine's first ``window`` finished requests: :meth:`add` returns True once at least
    ``rate`` of the window has failed, whatever the rest of it does (failed >= ceil(rate x window)); later
    requests are not counted."""

    def __init__(self, rate: float | None, window: int):
        self.limit = math.ceil(rate * window - 1e-9) if rate is not None else None  # 0.7 x 10 is 7.000000000000001
        self.window, self.finished, self.failed = window, 0, 0
        self.errors: Counter[str] = Counter()

    def add(self, error: str) -> bool:
        if self.limit is None or self.finished >= self.window:
            return False
        self.finished += 1
        if error:
            self.failed += 1
            self.errors[error.split(":", 1)[0]] += 1
        return self.failed >= self.limit

    def describe(self) -> str:
        (kind, count), = self.errors.most_common(1)
        return f"{self.failed} of its first {self.finished} requests failed ({count} x {kind})"


class OpenAIEngine:
    """Async client; ``generate`` is synchronous like every engine (on a private event loop),
    ``generate_async`` runs on the caller's loop (an async Ray Data actor with several batches in flight)."""

    def __init__(self, cfg: EngineConfig, api_key: SecretStr | None):
        self.cfg = cfg
        self._secret = api_key.get_secret_value() if api_key is not None else None
        register_secret(self._secret)
        self._loop: asyncio.AbstractEventLoop | None = None  # generate's own loop
        self._bound: tuple[asyncio.AbstractEventLoop, openai.AsyncOpenAI, asyncio.Semaphore] | None = None
        self.limiter = limiter_for(cfg)
        self.tokenizer = None
        if cfg.tokenizer:
            from ray_distill.models import load_tokenizer

            self.tokenizer = load_tokenizer(cfg.tokenizer)
        self.retries = 0  # retried requests since the engine started (all batches)
        self.error_rate = ErrorRate(cfg.stop_error_rate, cfg.error_window)
        self._stopped: KeyRefused | EngineFailing | None = None  # what stopped this engine (every later request)
        self.counted = 0  # replies without usage whose tokens this engine counted itself
        self.start_seconds = 0.0

    def generate(
        self, messages: list[list[dict]], sampling: SamplingConfig, seeds: list[list[int]]
    ) -> list[list[Completion]]:
        check_lengths(messages, seeds)
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(self.generate_async(messages, sampling, seeds))

    async def generate_async(
        self, messages: list[list[dict]], sampling: SamplingConfig, seeds: list[list[int]]
    ) -> list[list[Completion]]:
        """Every request of the batch through the engine's slots, shared with any other batch awaiting here."""
        check_lengths(messages, seeds)
        client, slots = self._client()

        async def bounded(conv: list[dict], seed: int) -> Completion:
            async with slots:
                self._raise_if_stopped()  # another batch of this actor found the key refused or the engine failing
                try:
                    completion = await self._request(client, conv, sampling, seed)
                except KeyRefused as err:
                    self._stopped = err
                    raise
            if self.error_rate.add(completion["error"]):  # most of the first requests failed: stop sending
                self._stopped = EngineFailing(self._redact(
                    f"{self.cfg.model} at {redact_text(str(self.cfg.base_url))}: {self.error_rate.describe()}, "
                    f"the last: {completion['error'][:200]}; check the model name and base_url "
                    "(engine.stop_error_rate sets when this stops a job)"))
                self._raise_if_stopped()
            return completion

        flat = await asyncio.gather(*(bounded(conv, s) for conv, ss in zip(messages, seeds) for s in ss))
        out, pos = [], 0
        for ss in seeds:
            out.append(list(flat[pos: pos + len(ss)]))
            pos += len(ss)
        return out

    def _raise_if_stopped(self) -> None:
        """Once a request found the key refused or the engine failing, no request of any batch is sent again."""
        if self._stopped is not None:
            raise type(self._stopped)(str(self._stopped))

    def _client(self) -> tuple[openai.AsyncOpenAI, asyncio.Semaphore]:
        """The client and the ``max_concurrency`` slots of the running event loop (both belong to one loop)."""
        loop = asyncio.get_running_loop()
        if self._bound is None or self._bound[0] is not loop:
            client = openai.AsyncOpenAI(base_url=self.cfg.base_url, api_key=self._secret or NO_KEY,
                                        timeout=self.cfg.request_timeout_s, max_retries=0)
            self._bound = (loop, client, asyncio.Semaphore(self.cfg.max_concurrency))
        return self._bound[1], self._bound[2]

    async def _request(self, client, conv: list[dict], sampling: SamplingConfig, seed: int) -> Completion:
        for attempt in range(self.cfg.max_retries + 1):
            if self.limiter is not None:
                await self.limiter.acquire()
            try:
                completion = await self._create(client, conv, sampling, seed)
            except Exception as err:  # one bad request must not fail the batch
                if refused(err):  # ... but a refused key fails every request: stop the job before it spends more
                    raise KeyRefused(self._redact(
                        f"{self.cfg.model} at {redact_text(str(self.cfg.base_url))} answered {err.status_code} "
                        f"({type(err).__name__}) to the key in {self.cfg.api_key_env or 'no variable'}: check that "
                        "the variable holds a key this server accepts")) from None
                if not is_retryable(err) or attempt == self.cfg.max_retries:
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    return error_completion(self._redact(f"{type(err).__name__}{tries}: {err}"))
                server_wait = retry_after_seconds(err)
                delay = backoff_delay(attempt, self.cfg.retry_backoff_s, server_wait, self.cfg.max_retry_wait_s)
                if self.limiter is not None and server_wait and getattr(err, "status_code", None) == 429:
                    self.limiter.pause(delay)  # the key is over its limit: every actor of the teacher waits
                self.retries += 1
                said = f" (server asked {server_wait:.1f} s)" if server_wait is not None else ""
                logger.warning("%s: retry %d/%d in %.1f s%s after %s", self.cfg.model, attempt + 1,
                               self.cfg.max_retries, delay, said, self._redact(f"{type(err).__name__}: {err}"))
                await asyncio.sleep(delay)
                continue
            if self.limiter is not None:
                self.limiter.spend(max(completion["num_tokens"], 0) + max(completion["prompt_tokens"], 0))
            return completion
        raise AssertionError("unreachable")

    async def _create(self, client, conv: list[dict], sampling: SamplingConfig, seed: int) -> Completion:
        common = dict(model=self.cfg.model, n=1, seed=seed, temperature=sampling.temperature, top_p=sampling.top_p)
        if sampling.stop:
            common["stop"] = sampling.stop
        if self.cfg.api == "chat":
            # vLLM/SGLang servers take template variables (e.g. enable_thinking) as chat_template_kwargs
            extra = {"extra_body": {"chat_template_kwargs": self.cfg.chat_template_kwargs}} \
                if self.cfg.chat_template_kwargs else {}
            resp = await client.chat.completions.create(
                messages=conv, max_completion_tokens=sampling.max_tokens, **common, **extra)
            choice, text = resp.choices[0], chat_text(resp.choices[0].message)
            prompt = "\n".join(str(m.get("content") or "") for m in conv)
        else:
            prompt = last_user_content(conv)
            resp = await client.completions.create(prompt=prompt, max_tokens=sampling.max_tokens, **common)
            choice, text = resp.choices[0], resp.choices[0].text
        if choice.finish_reason not in (FINISH_STOP, FINISH_LENGTH):
            return error_completion(f"request finished with {choice.finish_reason!r}")
        usage = resp.usage
        completion_tokens = getattr(usage, "completion_tokens", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        if completion_tokens is None or prompt_tokens is None:  # no usage: counted here, never -1 (budget)
            if not self.counted:
                how = f"tokenizer {self.cfg.tokenizer}" if self.tokenizer is not None else \
                    f"an estimate of 1 token per {BYTES_PER_TOKEN} bytes (set engine.tokenizer to count exactly)"
                logger.warning("%s at %s sends no token usage: counting its replies with %s", self.cfg.model,
                               redact_text(str(self.cfg.base_url)), how)
            self.counted += 1
            if completion_tokens is None:
                completion_tokens = self.count_tokens(text)
            if prompt_tokens is None:
                prompt_tokens = self.count_tokens(prompt)
        return Completion(text=text, num_tokens=int(completion_tokens), finish_reason=choice.finish_reason, error="",
                          prompt_tokens=int(prompt_tokens))

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by ``tokenizer`` when configured, else :func:`estimate_tokens`."""
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False))
        return estimate_tokens(text)

    def _redact(self, text: str) -> str:
        return redact_text(text.replace(self._secret, "***") if self._secret else text)
