"""OpenAIEngine against a real OpenAI-compatible server: vLLM's own server (CPU) on loopback, serving
the random micro student, with an API key. Direct engine calls, then the store through Ray Data."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from ray_distill import columns as C
from ray_distill.config import EngineConfig, ResourcesConfig, SamplingConfig, TeacherConfig
from ray_distill.generation.engines import build_engine, question_messages
from ray_distill.generation.store import GenerationStore
from ray_distill.synthetic.tasks import make_questions

SECRET = "sk-vllm-test-9f8e7d6c5b4a"
SERVED = "micro-teacher"
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tiny_student_path, tmp_path_factory):
    """``python -m vllm.entrypoints.openai.api_server`` (what ``vllm serve`` runs); the key goes in through
    VLLM_API_KEY, not the command line. Yields the base URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = {**os.environ, "VLLM_API_KEY": SECRET, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # engine core in the server process: no second vLLM import
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_student_path,
           "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
           "--dtype", "float32", "--max-model-len", "256"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not up after 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _engine_cfg(base_url: str, **kw) -> EngineConfig:
    return EngineConfig(kind="openai", model=SERVED, base_url=base_url, api_key_env="VLLM_TEST_KEY",
                        max_concurrency=8, max_retries=1, retry_backoff_s=0.05, **kw)


def test_engine_samples_per_seed_with_usage_tokens(vllm_server, monkeypatch):
    monkeypatch.setenv("VLLM_TEST_KEY", SECRET)
    engine = build_engine(_engine_cfg(vllm_server))
    questions = ["1+2", "9-4+1", "max(3,7)"]
    seeds = [[11, 12, 11], [11, 13], [14]]
    out = engine.generate([question_messages(q) for q in questions],
                          SamplingConfig(temperature=1.0, max_tokens=20), seeds)

    assert [len(c) for c in out] == [3, 2, 1]
    flat = [c for per_prompt in out for c in per_prompt]
    assert all(c["error"] == "" and c["finish_reason"] in ("stop", "length") for c in flat)
    assert all(1 <= c["num_tokens"] <= 20 and c["text"] for c in flat)
    # the chat template renders "<question>=": one character token each
    assert [c["prompt_tokens"] for c in out[1]] == [len("9-4+1") + 1] * 2
    assert out[0][0]["text"] == out[0][2]["text"] != out[0][1]["text"]  # same seed, same text
    assert engine.retries == 0

    raw = build_engine(_engine_cfg(vllm_server, api="completions"))
    ((c,),) = raw.generate([question_messages("1+2")], SamplingConfig(max_tokens=5), [[1]])
    assert c["error"] == "" and c["prompt_tokens"] == len("1+2")  # the raw prompt, no template


def test_a_wrong_key_stops_at_the_first_refusal_without_the_key(vllm_server, monkeypatch, caplog):
    """vLLM's own server with --api-key answers 401 to a wrong key: the engine stops (KeyRefused, exit 11) at
    once, naming the variable, never the key."""
    from ray_distill.errors import KeyRefused, exit_code

    monkeypatch.setenv("VLLM_TEST_KEY", SECRET[:-1] + "X")
    engine = build_engine(_engine_cfg(vllm_server))
    with pytest.raises(KeyRefused, match="answered 401 .* to the key in VLLM_TEST_KEY") as err:
        engine.generate([question_messages("1+2")], SamplingConfig(max_tokens=5), [[1]])
    assert engine.retries == 0  # 401 is not retried
    assert SECRET[:-1] not in str(err.value) + caplog.text and exit_code(err.value) == 11


def test_store_through_ray_data_with_counters(vllm_server, ray_local, tmp_path, monkeypatch):
    # set after the Ray cluster started: the actors get the key from the driver, not from their environment
    monkeypatch.setenv("VLLM_TEST_KEY", SECRET)
    questions = make_questions("arith", 5, 1, 3, seed=7)
    teacher = TeacherConfig(name="served", engine=_engine_cfg(vllm_server),
                            sampling=SamplingConfig(n=3, temperature=1.0, max_tokens=16, seed=2),
                            resources=ResourcesConfig(batch_size=4, num_cpus=0.5))
    store = GenerationStore(str(tmp_path / "gens"))

    df, counters = store.get_or_generate(questions, teacher)
    assert len(df) == 15 and (df[C.ERROR] == "").all()
    assert (df.groupby(C.QUESTION_ID)[C.SAMPLE_INDEX].apply(sorted).map(tuple) == (0, 1, 2)).all()
    assert (df[C.PROMPT_TOKENS] == df[C.QUESTION].str.len() + 1).all()
    assert {k: counters[k] for k in ("requested", "cached", "generated", "failed", "prompts")} == \
        {"requested": 15, "cached": 0, "generated": 15, "failed": 0, "prompts": 5}
    assert counters["completion_tokens"] == df[C.NUM_TOKENS].sum() > 0
    assert counters["prompt_tokens"] == df[C.PROMPT_TOKENS].sum()

    again, counters2 = store.get_or_generate(questions, teacher.model_copy(
        update={"engine": _engine_cfg("http://127.0.0.1:9/v1")}))  # moved server: same keys, nothing sent
    assert counters2["cached"] == 15 and counters2["generated"] == 0
    assert again[C.COMPLETION].tolist() == df[C.COMPLETION].tolist()

    monkeypatch.delenv("VLLM_TEST_KEY")
    with pytest.raises(ValueError, match="environment variable VLLM_TEST_KEY named by api_key_env is not set"):
        store.get_or_generate(questions, teacher, n=4)
