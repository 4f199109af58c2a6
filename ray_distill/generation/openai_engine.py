"""Teacher generation through any OpenAI-compatible endpoint (a vLLM server, a hosted API).

    cfg = EngineConfig(kind="openai", model="qwq-32b", base_url="http://host:8000/v1", api_key_env="TEACHER_API_KEY")
    engine = OpenAIEngine(cfg, engines.resolve_api_key(cfg))   # the key from $TEACHER_API_KEY

One request per seed (``n=1``, ``seed`` passed to the server), at most ``max_concurrency`` in flight,
each with its own timeout; 429, 408/409, 5xx and connection errors are retried with exponential
backoff and jitter (a server's ``Retry-After`` is honoured). A request that still fails becomes an
error :class:`Completion`; the batch goes on. Token counts come from the response ``usage``.

The API key is read from the environment variable *named* by ``api_key_env`` and travels as a
:class:`pydantic.SecretStr`; it is never logged, never part of a store key or of MLflow params, and is
blanked out of every error message.
"""

from __future__ import annotations

import asyncio
import logging
import random

import openai
from pydantic import SecretStr

from ray_distill.config import EngineConfig, SamplingConfig
from ray_distill.generation.engines import (
    FINISH_LENGTH,
    FINISH_STOP,
    Completion,
    check_lengths,
    error_completion,
    last_user_content,
)

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0
RETRY_STATUS = frozenset({408, 409, 429})  # and every 5xx
NO_KEY = "EMPTY"  # what the client sends when no key is configured (vLLM's convention)


def backoff_delay(attempt: int, base_s: float, retry_after_s: float | None = None) -> float:
    """Delay before retry ``attempt`` (0-based): ``base * 2**attempt`` capped at 60 s, the upper half
    jittered; at least the server's ``Retry-After``."""
    ceiling = min(MAX_BACKOFF_S, base_s * 2**attempt)
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    return max(delay, min(retry_after_s or 0.0, MAX_BACKOFF_S))


def is_retryable(err: BaseException) -> bool:
    if isinstance(err, openai.APIConnectionError):  # includes timeouts
        return True
    return isinstance(err, openai.APIStatusError) and (err.status_code in RETRY_STATUS or err.status_code >= 500)


def retry_after_seconds(err: BaseException) -> float | None:
    """The ``Retry-After`` header of an error response in seconds (None when absent or a date)."""
    if not isinstance(err, openai.APIStatusError):
        return None
    try:
        return float(err.response.headers.get("retry-after", ""))
    except ValueError:
        return None


def chat_text(message) -> str:
    """The assistant text of a chat message; a reasoning server's separate chain of thought (vLLM's
    ``reasoning``, DeepSeek-style ``reasoning_content``) is put back in front as ``<think>…</think>``."""
    extra = message.model_extra or {}
    reasoning = extra.get("reasoning") or extra.get("reasoning_content")
    content = message.content or ""
    return f"<think>{reasoning}</think>{content}" if reasoning else content


class OpenAIEngine:
    """Async client on a private event loop; ``generate`` is synchronous like every engine."""

    def __init__(self, cfg: EngineConfig, api_key: SecretStr | None):
        self.cfg = cfg
        self._secret = api_key.get_secret_value() if api_key is not None else None
        self._loop = asyncio.new_event_loop()
        self.client = openai.AsyncOpenAI(base_url=cfg.base_url, api_key=self._secret or NO_KEY,
                                         timeout=cfg.request_timeout_s, max_retries=0)
        self.retries = 0  # retried requests since the engine started (all batches)
        self.start_seconds = 0.0

    def generate(
        self, messages: list[list[dict]], sampling: SamplingConfig, seeds: list[list[int]]
    ) -> list[list[Completion]]:
        check_lengths(messages, seeds)
        return self._loop.run_until_complete(self._generate(messages, sampling, seeds))

    async def _generate(self, messages, sampling, seeds) -> list[list[Completion]]:
        in_flight = asyncio.Semaphore(self.cfg.max_concurrency)

        async def bounded(conv: list[dict], seed: int) -> Completion:
            async with in_flight:
                return await self._request(conv, sampling, seed)

        flat = await asyncio.gather(*(bounded(conv, s) for conv, ss in zip(messages, seeds) for s in ss))
        out, pos = [], 0
        for ss in seeds:
            out.append(list(flat[pos: pos + len(ss)]))
            pos += len(ss)
        return out

    async def _request(self, conv: list[dict], sampling: SamplingConfig, seed: int) -> Completion:
        for attempt in range(self.cfg.max_retries + 1):
            try:
                return await self._create(conv, sampling, seed)
            except Exception as err:  # one bad request must not fail the batch
                if not is_retryable(err) or attempt == self.cfg.max_retries:
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    return error_completion(self._redact(f"{type(err).__name__}{tries}: {err}"))
                delay = backoff_delay(attempt, self.cfg.retry_backoff_s, retry_after_seconds(err))
                self.retries += 1
                logger.warning("%s: retry %d/%d in %.1f s after %s", self.cfg.model, attempt + 1,
                               self.cfg.max_retries, delay, self._redact(f"{type(err).__name__}: {err}"))
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _create(self, conv: list[dict], sampling: SamplingConfig, seed: int) -> Completion:
        common = dict(model=self.cfg.model, n=1, seed=seed, temperature=sampling.temperature, top_p=sampling.top_p)
        if sampling.stop:
            common["stop"] = sampling.stop
        if self.cfg.api == "chat":
            # vLLM/SGLang servers take template variables (e.g. enable_thinking) as chat_template_kwargs
            extra = {"extra_body": {"chat_template_kwargs": self.cfg.chat_template_kwargs}} \
                if self.cfg.chat_template_kwargs else {}
            resp = await self.client.chat.completions.create(
                messages=conv, max_completion_tokens=sampling.max_tokens, **common, **extra)
            choice, text = resp.choices[0], chat_text(resp.choices[0].message)
        else:
            resp = await self.client.completions.create(
                prompt=last_user_content(conv), max_tokens=sampling.max_tokens, **common)
            choice, text = resp.choices[0], resp.choices[0].text
        if choice.finish_reason not in (FINISH_STOP, FINISH_LENGTH):
            return error_completion(f"request finished with {choice.finish_reason!r}")
        usage = resp.usage
        return Completion(text=text, num_tokens=usage.completion_tokens if usage else -1,
                          finish_reason=choice.finish_reason, error="",
                          prompt_tokens=usage.prompt_tokens if usage else -1)

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text
