"""Crash resume: a driver generating into the store is SIGKILLed mid-run; the rerun keeps every row the
dead run persisted and generates only the rest. The teacher is the openai engine against a stub server
with a per-request latency (a slow, paid API in miniature), so no test hook enters library code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from ray_distill import columns as C
from ray_distill.config import EngineConfig, ResourcesConfig, SamplingConfig, TeacherConfig
from ray_distill.generation.store import KEY, GenerationStore
from ray_distill.synthetic.tasks import make_questions

DRIVER = """
import json, sys
import ray
from ray_distill.config import TeacherConfig
from ray_distill.generation.store import GenerationStore

args = json.load(open(sys.argv[1]))
ray.init(address=args["address"], log_to_driver=False, configure_logging=False)
teacher = TeacherConfig.model_validate(args["teacher"])
GenerationStore(args["root"], flush_rows=args["flush_rows"]).get_or_generate(args["questions"], teacher)
print("finished")
"""


def wait_until_quiet(server, quiet_s: float, timeout_s: float) -> None:
    """Return once the stub server has received no request for ``quiet_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    seen, since = len(server.requests), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, f"requests still arriving after {timeout_s}s: {len(server.requests)}"
        time.sleep(0.1)
        if len(server.requests) != seen:
            seen, since = len(server.requests), time.monotonic()


@pytest.mark.slow
def test_sigkill_mid_generation_then_rerun_generates_only_the_rest(ray_local, openai_stub, tmp_path, monkeypatch):
    monkeypatch.setenv("STUB_API_KEY", "sk-resume-test")
    questions = make_questions("arith", 150, 1, 3, seed=11)
    with openai_stub(delay_s=0.04) as server:
        teacher = TeacherConfig(
            name="paid", sampling=SamplingConfig(n=2, seed=1),
            engine=EngineConfig(kind="openai", model="stub", base_url=server.base_url, api_key_env="STUB_API_KEY",
                                max_concurrency=4),
            resources=ResourcesConfig(batch_size=8, num_cpus=0.5))
        store = GenerationStore(str(tmp_path / "gens"), flush_rows=8)
        args = tmp_path / "args.json"
        args.write_text(json.dumps({"address": ray_local.get_runtime_context().gcs_address, "root": store.root,
                                    "flush_rows": 8, "teacher": teacher.model_dump(), "questions": questions}))
        (tmp_path / "driver.py").write_text(DRIVER)
        proc = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(args)], start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while not store.part_files("paid") and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert store.part_files("paid"), f"no part file: {proc.poll()=}\n{proc.stdout.read().decode()[-3000:]}"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert b"finished" not in proc.stdout.read()

        # The dead driver's Ray Data actors outlive it until Ray notices the job is gone; wait until their
        # last in-flight requests have reached the server so the count below is the rerun's alone.
        wait_until_quiet(server, quiet_s=2.0, timeout_s=60)
        parts = store.part_files("paid")
        persisted = sum(pq.read_metadata(p, filesystem=store.fs).num_rows for p in parts)
        assert 0 < persisted < 300 and len(store.load("paid")) == persisted  # killed mid-run, no duplicates
        sent_before = len(server.requests)

        df, counters = store.get_or_generate(questions, teacher)

    assert (counters["requested"], counters["cached"], counters["generated"], counters["failed"]) == \
        (300, persisted, 300 - persisted, 0)
    assert len(server.requests) - sent_before == 300 - persisted  # the rerun paid only for the rest
    stored = store.load("paid")  # every part readable (load raises on a broken part)
    raw_rows = sum(len(pq.read_table(p, filesystem=store.fs)) for p in store.part_files("paid"))
    assert raw_rows == len(stored) == stored[KEY].nunique() == 300  # nothing lost, nothing twice
    assert df[KEY].is_unique and (df[C.ERROR] == "").all()
    expected = "<think>" + df[C.QUESTION] + " (seed " + df[C.SEED].astype(str) + ")</think>\\boxed{3}"
    assert (df[C.COMPLETION] == expected).all()  # the stub's answer for exactly this question and seed


def _actor_pids(title: str) -> list[int]:
    """Processes whose command line (Ray's process title for an actor) contains ``title``."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if title.encode() in f.read() and int(pid) != os.getpid():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


@pytest.mark.slow
def test_engine_actor_killed_mid_generation_loses_and_repeats_nothing(ray_local, openai_stub, tmp_path, monkeypatch):
    """SIGKILL the engine actor while it generates: Ray Data restarts it (max_restarts) and retries its batch,
    and the one call returns every requested sample exactly once; the store holds each once."""
    import threading

    monkeypatch.setenv("STUB_API_KEY", "sk-actor-kill-test")
    questions = make_questions("arith", 60, 1, 3, seed=12)
    with openai_stub(delay_s=0.03) as server:
        teacher = TeacherConfig(
            name="flaky", sampling=SamplingConfig(n=2, seed=2),
            engine=EngineConfig(kind="openai", model="stub", base_url=server.base_url, api_key_env="STUB_API_KEY",
                                max_concurrency=2),
            resources=ResourcesConfig(batch_size=8, num_cpus=0.5))
        store = GenerationStore(str(tmp_path / "gens"), flush_rows=8)
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(out=store.get_or_generate(questions, teacher)))
        worker.start()
        deadline = time.monotonic() + 90
        while not store.part_files("flaky") and worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = _actor_pids("GenerateBatch")
        assert store.part_files("flaky") and worker.is_alive() and killed, "not mid-generation"
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        worker.join(timeout=180)
        assert not worker.is_alive() and "out" in result
    df, counters = result["out"]
    assert (counters["requested"], counters["generated"], counters["failed"]) == (120, 120, 0)
    assert len(df) == 120 and df[KEY].is_unique and (df[C.ERROR] == "").all()
    raw_rows = sum(len(pq.read_table(p, filesystem=store.fs)) for p in store.part_files("flaky"))
    assert raw_rows == len(store.load("flaky")) == 120  # no part written twice
    assert len(server.requests) >= 120  # the killed batch's requests were sent again
