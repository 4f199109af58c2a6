"""Continuous batching for the ``vllm`` engine: several batches in flight in one engine, requests
streaming in and out, as ``ray.data.llm``'s vLLM stage does it.

    engine = ContinuousVLLMEngine(EngineConfig(kind="vllm", model=path, dtype="float32"))
    completions = await engine.generate_async(messages, SamplingConfig(max_tokens=64), seeds)

The synchronous path (:meth:`VLLMEngine.generate`) runs each batch as one wave: its requests are
enqueued and the engine stepped until the last of them finishes, so while the longest completion of
a wave runs, the engine decodes for ever fewer requests and the next batch waits. Here one thread
(:class:`EngineLoop`) owns vLLM's engine and steps it as long as any request is unfinished;
requests of any batch join the running set at the next step, and each request's output goes back
to its awaiting batch as soon as it finishes. A batch completes when its own requests do.

Why not ``vllm.AsyncLLM`` (what ``ray.data.llm`` uses): it always runs the engine core in a spawned
process (vLLM 0.32: "Running EngineCore in asyncio without multiprocessing is not currently
supported"), which on the CPU build costs a second vLLM import and model load per engine start and
a second process competing for the actor's CPUs. The loop here drives the in-process engine that
``vllm.LLM`` wraps (``LLMEngine.add_request`` / ``step``, the same calls ``LLM.generate`` makes), so
prompts, seeds, validation errors and outputs are exactly those of the synchronous path.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field

from ray_distill.config import EngineConfig, SamplingConfig
from ray_distill.generation.engines import VLLMEngine, _to_completion
from ray_distill.generation.types import Completion, error_completion

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine failed (or its loop was stopped): no request in flight or later can finish."""


@dataclass
class RequestTimes:
    """When the loop added a request to the engine and when it finished, in engine steps (the step
    counter before the step that first ran it / after the step that finished it) and monotonic seconds."""

    request_id: str
    added_step: int
    added_s: float
    finished_step: int = -1
    finished_s: float = 0.0


@dataclass
class _Waiting:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    times: RequestTimes


@dataclass
class LoopStats:
    """What the loop did: engine steps, seconds inside ``step``, seconds idle (no unfinished request,
    waiting for one), and the times of the last ``keep`` (up to twice that) finished requests."""

    steps: int = 0
    in_flight_steps: int = 0  # sum over steps of the requests in flight (/ steps: the mean batch of a step)
    step_s: float = 0.0
    idle_s: float = 0.0
    keep: int = 4096
    requests: list[RequestTimes] = field(default_factory=list)


class EngineLoop:
    """One thread that owns a vLLM ``LLMEngine`` (in-process engine core) and steps it while any request
    is unfinished; :meth:`generate` may be awaited from any event loop, by any number of batches at once.

    The engine is touched by this thread only: requests and aborts reach it through a queue and are
    applied between steps. An engine failure fails every request in flight (their batches raise) and
    every later one: the actor is then broken, as with the synchronous path.
    """

    def __init__(self, llm_engine):
        self.engine = llm_engine
        self.stats = LoopStats()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: dict[str, _Waiting] = {}
        self._ids = itertools.count()
        self._dead: BaseException | None = None
        self._progress = time.monotonic()  # when the engine last finished a step, or last went from idle to busy
        self._thread = threading.Thread(target=self._run, name="vllm-engine-loop", daemon=True)
        self._thread.start()

    async def generate(self, prompt: dict, params) -> object:
        """The finished ``RequestOutput`` of one request; raises what vLLM raised when adding it (e.g. a
        prompt longer than max_model_len) or what the engine died of."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        request_id = str(next(self._ids))
        self._inbox.put(("add", request_id, prompt, params, loop, future))
        try:
            return await future
        except asyncio.CancelledError:  # the batch was cancelled: free the engine of the request
            self._inbox.put(("abort", request_id))
            raise

    def stalled_for(self) -> float:
        """Seconds since the engine last made progress while requests wait for it (0 when none waits)."""
        return time.monotonic() - self._progress if self._waiting and self._dead is None else 0.0

    def close(self) -> None:
        """Stop the thread after the current step (requests still in flight are failed)."""
        self._inbox.put(("stop",))
        self._thread.join()

    def _run(self) -> None:
        while True:
            idle = self._dead is not None or not self.engine.has_unfinished_requests()
            start = time.perf_counter()
            try:
                messages = [self._inbox.get(block=idle)]
            except queue.Empty:
                messages = []
            if idle:
                self.stats.idle_s += time.perf_counter() - start
                self._progress = time.monotonic()
            while True:
                try:
                    messages.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            for message in messages:
                if message[0] == "stop":
                    self._fail_all(EngineDeadError("engine loop stopped"))
                    return
                self._apply(message)
            if self._dead is None and self.engine.has_unfinished_requests():
                self._step()

    def _apply(self, message: tuple) -> None:
        if message[0] == "abort":
            if self._waiting.pop(message[1], None) is not None and self._dead is None:
                self.engine.abort_request([message[1]])
            return
        _, request_id, prompt, params, loop, future = message
        if self._dead is not None:
            _resolve(loop, future, error=self._dead)
            return
        try:  # vLLM validates here, as at LLM.enqueue
            self.engine.add_request(request_id, prompt, params)
        except Exception as err:
            _resolve(loop, future, error=err)
            return
        times = RequestTimes(request_id, self.stats.steps, time.monotonic())
        self._waiting[request_id] = _Waiting(loop, future, times)

    def _step(self) -> None:
        start = time.perf_counter()
        try:
            outputs = self.engine.step()
        except BaseException as err:  # the engine is gone: nothing in flight can finish
            logger.exception("vLLM engine step failed; failing %d requests in flight", len(self._waiting))
            self._dead = EngineDeadError(f"vLLM engine failed: {type(err).__name__}: {err}")
            self._dead.__cause__ = err
            self._fail_all(self._dead)
            return
        self._progress = time.monotonic()
        self.stats.steps += 1
        self.stats.in_flight_steps += len(self._waiting)
        self.stats.step_s += time.perf_counter() - start
        for output in outputs:
            if not output.finished:
                continue
            waiting = self._waiting.pop(output.request_id, None)
            if waiting is None:  # aborted meanwhile
                continue
            waiting.times.finished_step, waiting.times.finished_s = self.stats.steps, time.monotonic()
            self.stats.requests.append(waiting.times)
            _resolve(waiting.loop, waiting.future, result=output)
        if len(self.stats.requests) > 2 * self.stats.keep:
            del self.stats.requests[: -self.stats.keep]

    def _fail_all(self, err: BaseException) -> None:
        for waiting in self._waiting.values():
            _resolve(waiting.loop, waiting.future, error=err)
        self._waiting.clear()


def exit_process(seconds: float, in_flight: int) -> None:
    """What a stalled engine's watchdog does: end this process, so that Ray restarts the actor (an engine host, or
    a stage's engine actor) and sends its unfinished calls again to a fresh engine."""
    logger.error("vLLM engine made no progress for %.0f s with %d requests in flight: exiting so that Ray restarts "
                 "this actor and retries its batches (engine.stall_timeout_s)", seconds, in_flight)
    logging.shutdown()
    os._exit(STALL_EXIT_CODE)


STALL_EXIT_CODE = 75


class Watchdog:
    """A thread that calls ``on_stall(seconds, requests in flight)`` once when ``loop`` has had requests waiting
    and no finished engine step for more than ``timeout_s`` (a hung step: a deadlock, a lost device). By default
    that ends the process (:func:`exit_process`): Ray restarts the actor and retries its batches."""

    def __init__(self, loop: EngineLoop, timeout_s: float, on_stall=exit_process, period_s: float | None = None):
        self.loop, self.timeout_s, self.on_stall = loop, timeout_s, on_stall
        self.period_s = period_s if period_s is not None else min(5.0, timeout_s / 4)
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vllm-engine-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            stalled = self.loop.stalled_for()
            if stalled > self.timeout_s:
                self.fired = True
                self.on_stall(stalled, len(self.loop._waiting))
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future, result=None, error=None) -> None:
    """Complete ``future`` on its own event loop (from the engine thread)."""

    def complete() -> None:
        if future.done():  # cancelled by its batch
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    try:
        loop.call_soon_threadsafe(complete)
    except RuntimeError:  # that event loop is closed: nobody waits any more
        pass


class ContinuousVLLMEngine(VLLMEngine):
    """:class:`VLLMEngine` whose batches share one continuously batched engine (:class:`EngineLoop`).
    Same contract and same requests (prompt, per-sample seed, params) as the synchronous path."""

    def __init__(self, cfg: EngineConfig):
        super().__init__(cfg)
        self.loop = EngineLoop(self.llm.llm_engine)
        self.watchdog = Watchdog(self.loop, cfg.stall_timeout_s) if cfg.stall_timeout_s else None

    def close(self) -> None:
        """Stop the watchdog and the loop (requests still in flight are failed)."""
        if self.watchdog is not None:
            self.watchdog.stop()
        self.loop.close()

    async def generate_async(
        self, messages: list[list[dict]], sampling: SamplingConfig, seeds: list[list[int]]
    ) -> list[list[Completion]]:
        out, requests = self.requests(messages, sampling, seeds)
        start = time.perf_counter()
        results = await asyncio.gather(*(self.loop.generate(prompt, params) for _, _, prompt, params, _ in requests),
                                       return_exceptions=True)
        num_tokens = 0
        for (i, j, _, _, opened), res in zip(requests, results):
            if isinstance(res, (asyncio.CancelledError, EngineDeadError)):  # the batch fails, not one request
                raise res
            if isinstance(res, BaseException):
                out[i][j] = error_completion(res)
                continue
            out[i][j] = _to_completion(res.outputs[0], len(res.prompt_token_ids), opened)
            num_tokens += out[i][j]["num_tokens"]
        stats = self.loop.stats
        logger.info("vLLM generated %d samples, %d tokens in %.1f s (continuous batching; engine so far: %d steps "
                    "of %.0f requests in flight on average, %.1f s stepping, %.1f s idle)", len(requests), num_tokens,
                    time.perf_counter() - start, stats.steps, stats.in_flight_steps / max(stats.steps, 1),
                    stats.step_s, stats.idle_s)
        return out

    def generate(
        self, messages: list[list[dict]], sampling: SamplingConfig, seeds: list[list[int]]
    ) -> list[list[Completion]]:
        """The synchronous contract, through the loop (from code that runs no event loop)."""
        return asyncio.run(self.generate_async(messages, sampling, seeds))
