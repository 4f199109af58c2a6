"""Continuous batching (``ray_distill.generation.continuous``) on a real vLLM engine (CPU, random micro
student): batches in flight share the engine, and the samples are those of the synchronous waves."""

from __future__ import annotations

import pytest

from ray_distill.config import EngineConfig, ResourcesConfig, SamplingConfig, TeacherConfig
from ray_distill.generation.actor import (
    VLLM_CPU_ENV_DEFAULTS,
    ContinuousGenerateBatch,
    GenerateBatch,
    batch_class,
    engine_runtime_env,
)


def test_batch_class_and_runtime_env():
    vllm = EngineConfig(kind="vllm", model="m")
    assert batch_class(vllm) is ContinuousGenerateBatch
    assert batch_class(vllm.model_copy(update={"max_concurrent_batches": 0})) is GenerateBatch  # the old waves
    assert batch_class(EngineConfig(kind="scripted", persona="concise")) is GenerateBatch
    assert engine_runtime_env(TeacherConfig(name="t", engine=vllm))["env_vars"].keys() == VLLM_CPU_ENV_DEFAULTS.keys()
    gpu = TeacherConfig(name="t", engine=vllm, resources=ResourcesConfig(num_gpus=1))
    assert engine_runtime_env(gpu) is None
    with pytest.raises(ValueError, match="max_concurrent_batches"):
        EngineConfig(kind="vllm", model="m", max_concurrent_batches=-1)


@pytest.mark.slow
def test_batches_overlap_in_one_engine_and_match_the_synchronous_wave(ray_local, tiny_student_path):
    def _overlap_and_identity(model: str) -> dict:
        """In a fresh worker process (vLLM's state stays out of the test and of reused workers): one engine;
        (1) a long request, then a batch of short ones submitted while it runs; (2) the same seeded requests
        as one synchronous wave and as three concurrent batches."""
        import asyncio

        from ray_distill.generation.continuous import ContinuousVLLMEngine
        from ray_distill.generation.engines import VLLMEngine, question_messages

        engine = ContinuousVLLMEngine(EngineConfig(kind="vllm", model=model, dtype="float32", max_model_len=256))
        loop = engine.loop

        async def overlap() -> dict:
            long = asyncio.ensure_future(engine.generate_async(
                [question_messages("12+34")], SamplingConfig(temperature=0.0, max_tokens=160), [[1]]))
            while loop.stats.steps < 20 and not long.done():  # the long request is decoding
                await asyncio.sleep(0.01)
            short = await engine.generate_async([question_messages(f"{i}+{i}") for i in range(8)],
                                                SamplingConfig(temperature=1.0, max_tokens=4), [[i] for i in range(8)])
            steps_when_short_done, long_done = loop.stats.steps, long.done()
            return {"long": (await long)[0][0], "short": [c[0] for c in short],
                    "steps_when_short_done": steps_when_short_done, "long_done_then": long_done,
                    "times": [vars(t) for t in loop.stats.requests]}

        first = asyncio.run(overlap())

        questions = [f"{i}*{i + 3}-{i}" for i in range(12)]
        messages = [question_messages(q) for q in questions]
        seeds = [[100 + i, 200 + i] for i in range(12)]
        sampling = SamplingConfig(temperature=1.0, max_tokens=24)
        wave = VLLMEngine.generate(engine, messages, sampling, seeds)  # the synchronous path (the loop is idle)

        async def concurrent():
            parts = await asyncio.gather(*(engine.generate_async(messages[k::3], sampling, seeds[k::3]) for k in range(3)))
            merged = [None] * len(messages)
            for k, part in enumerate(parts):
                merged[k::3] = part
            return merged

        cont = asyncio.run(concurrent())
        loop.close()
        return {**first, "wave": wave, "continuous": cont}

    ray = ray_local
    task = ray.remote(num_cpus=1, max_calls=1, runtime_env={"env_vars": dict(VLLM_CPU_ENV_DEFAULTS)})
    res = ray.get(task(_overlap_and_identity).remote(tiny_student_path))

    long, short = res["long"], res["short"]
    assert long["error"] == "" and long["num_tokens"] >= 40, long  # greedy decoding of the long request ran long
    assert all(c["error"] == "" and 1 <= c["num_tokens"] <= 4 for c in short), short
    # the short batch came back while the long request was still decoding: no wave held it back
    assert not res["long_done_then"]
    times = {t["request_id"]: t for t in res["times"]}
    long_t = times["0"]
    short_t = [times[str(i)] for i in range(1, 9)]
    assert all(long_t["added_step"] < t["added_step"] and t["finished_step"] < long_t["finished_step"] for t in short_t)
    # ... and it did not hold the long request back either: one engine step per token of the long request
    assert long_t["finished_step"] - long_t["added_step"] <= long["num_tokens"] + 1

    # same requests (prompt, seed) -> same samples, whether one wave or three batches in flight at once
    assert res["continuous"] == res["wave"]
    texts = [c["text"] for per_prompt in res["wave"] for c in per_prompt]
    assert all(c["error"] == "" for per_prompt in res["wave"] for c in per_prompt) and len(set(texts)) >= 20


class _Engine:
    """A stand-in for vLLM's in-process engine: each step takes ``step_s`` (or blocks until ``release`` is set when
    ``hang``), and a request finishes after ``steps`` steps."""

    def __init__(self, hang: bool = False, step_s: float = 0.01, steps: int = 1000):
        import threading

        self.hang, self.step_s, self.steps = hang, step_s, steps
        self.release = threading.Event()
        self.running: dict[str, int] = {}

    def has_unfinished_requests(self) -> bool:
        return bool(self.running)

    def add_request(self, request_id, prompt, params) -> None:
        self.running[request_id] = 0

    def abort_request(self, ids) -> None:
        for i in ids:
            self.running.pop(i, None)

    def step(self) -> list:
        import time
        from types import SimpleNamespace

        if self.hang:
            self.release.wait()
        time.sleep(self.step_s)
        done = []
        for rid in list(self.running):
            self.running[rid] += 1
            if self.running[rid] >= self.steps:
                del self.running[rid]
                done.append(SimpleNamespace(request_id=rid, finished=True))
        return done


def _watch(engine: _Engine, seconds: float) -> list:
    """Run one request on an EngineLoop over ``engine`` for ``seconds`` under a 0.3 s watchdog; what it reported."""
    import asyncio

    from ray_distill.generation.continuous import EngineLoop, Watchdog

    loop = EngineLoop(engine)
    fired: list = []
    dog = Watchdog(loop, 0.3, on_stall=lambda s, n: fired.append((s, n)), period_s=0.05)

    async def run() -> None:
        request = asyncio.ensure_future(loop.generate({"prompt_token_ids": [1]}, None))
        await asyncio.sleep(seconds)
        request.cancel()

    asyncio.run(run())
    dog.stop()
    engine.release.set()
    loop.close()
    return fired


def test_watchdog_fires_on_a_hung_step_and_never_on_a_slow_request_or_an_idle_engine():
    from ray_distill.generation.continuous import EngineLoop, Watchdog

    fired = _watch(_Engine(hang=True), 1.0)
    assert len(fired) == 1 and fired[0][0] > 0.3 and fired[0][1] == 1  # once, with the request in flight
    assert _watch(_Engine(step_s=0.02, steps=1000), 1.0) == []  # a long request whose steps keep finishing
    idle = EngineLoop(_Engine())
    dog = Watchdog(idle, 0.1, on_stall=lambda s, n: pytest.fail("an idle engine stalled"), period_s=0.02)
    import time

    time.sleep(0.5)
    assert idle.stalled_for() == 0.0
    dog.stop()
    idle.close()
    assert EngineConfig(kind="vllm", model="m").stall_timeout_s == 900 and \
        EngineConfig(kind="vllm", model="m", stall_timeout_s=None).stall_timeout_s is None
