"""Adaptive sampling with no wave (curation.adaptive_stream) against a real local Ray cluster and an
OpenAI-compatible stub server (conftest.py) that answers one question slowly: the other questions run their second
round while the slow one's first is still being answered; the rounds in waves (plane.curate_adaptive, the LLM
judge's path) make them wait for it. Both give the same samples and decisions."""

from __future__ import annotations

import threading
import time

import pytest

from ray_distill import columns as C
from ray_distill.config import EngineConfig, ResourcesConfig, TeacherConfig
from ray_distill.curation import adaptive as A
from ray_distill.curation.adaptive_stream import QuestionState, curate_adaptive_stream
from ray_distill.curation.plane import Grading, curate_adaptive, read_buckets, write_questions
from ray_distill.generation.engines import question_messages
from ray_distill.generation.store import GenerationStore
from ray_distill.synthetic.tasks import make_questions

SLOW_S = 8.0


def test_question_state_counts_a_retried_failure_once():
    s = QuestionState(block=0, want=0)
    assert s.next_round(2) == {"n": 2, "from": 0, "retry": []} and s.pending == 2
    s.add(0, failed=True, tokens=0, digest=None)
    s.add(1, failed=False, tokens=10, digest=7)
    assert (s.pending, s.sampled, s.tokens, s.failed) == (0, 2, 10, {0: 0})
    plan = A.SamplingPlan(target=1, max_samples=4)
    assert s.decide(plan) == A.CONTINUE
    # round 2: sample 2, and sample 0 again
    assert s.next_round(plan.next_total(1, 2)) == {"n": 3, "from": 2, "retry": [0]} and s.pending == 2
    s.add(0, failed=False, tokens=12, digest=8)
    s.add(2, failed=False, tokens=9, digest=8)  # the same completion as sample 0: not a new distinct one
    assert (s.sampled, s.tokens, s.failed, len(s.digests)) == (3, 31, {}, 2)
    assert s.decide(plan) == A.CONTINUE  # 2 distinct correct: P + margin (3) not reached, M (4) not either


@pytest.mark.slow
def test_a_slow_question_does_not_hold_the_others_next_round(ray_local, openai_stub, monkeypatch, tmp_path):
    monkeypatch.setenv("STUB_API_KEY", "stub-key")
    questions = make_questions("arith", 6, 1, 3, seed=11)
    slow = questions[0]
    sent = {question_messages(q[C.QUESTION])[-1]["content"]: q[C.QUESTION_ID] for q in questions}  # what arrives
    assert len(sent) == 6
    url = write_questions(questions, str(tmp_path / "questions.parquet"))
    # P = 1, M = 4: round 1 asks for the floor (2 samples), round 2 for one more, after which every question stops
    # (the stub always answers 3: right answers reach 3 distinct correct ones, "enough"; wrong ones are hopeless)
    plan = A.SamplingPlan(target=1, max_samples=4)
    grading = Grading(max_tokens=None, require_think=True, tokenizer=None, num_graders=1)
    arrivals: list[tuple[str, float]] = []
    lock = threading.Lock()

    def delay(text: str) -> float:
        with lock:
            arrivals.append((text, time.monotonic()))
        return SLOW_S if sent[text] == slow[C.QUESTION_ID] else 0.0

    def sample(curate, name):
        arrivals.clear()
        with openai_stub(delay_s=delay) as server:
            teacher = TeacherConfig(
                name="stub", engine=EngineConfig(kind="openai", model="stub", base_url=server.base_url,
                                                 api_key_env="STUB_API_KEY"),
                resources=ResourcesConfig(batch_size=2, num_cpus=0.5))  # a chunk: one question's round
            store = GenerationStore(str(tmp_path / name / "generations"))
            out = curate(store, url, teacher, plan, str(tmp_path / name / "work"), grading)
        times = {q: sorted(t for text, t in arrivals if sent[text] == q) for q in sent.values()}
        answered = times[slow[C.QUESTION_ID]][0] + SLOW_S  # when the slow question's first round was answered
        second = {q: ts[2] for q, ts in times.items() if q != slow[C.QUESTION_ID]}  # each one's round-2 request
        return out, answered, second

    stream, answered, second = sample(curate_adaptive_stream, "stream")
    assert stream.rounds == 2 and set(stream.final.values()) <= {A.ENOUGH, A.HOPELESS}
    assert (stream.stats[A.SAMPLED] == 3).all() and len(stream.stats) == 6
    late = {q: round(t - answered, 2) for q, t in second.items() if t >= answered}
    assert not late, f"round 2 of these questions waited for the slow one's round 1 (s after it): {late}"

    waves, answered_w, second_w = sample(curate_adaptive, "waves")
    assert all(t >= answered_w for t in second_w.values())  # a wave: every round 2 after the slowest round 1
    # the same decisions and counters, and the same graded samples
    assert waves.final == stream.final and waves.stats.sort_index().equals(stream.stats.sort_index())
    key = [C.QUESTION_ID, C.SAMPLE_INDEX]
    a, b = (A.latest_samples(read_buckets(r.graded_url)).sort_values(key) for r in (stream, waves))
    assert a[C.COMPLETION].tolist() == b[C.COMPLETION].tolist() and a[C.CORRECT].tolist() == b[C.CORRECT].tolist()


@pytest.mark.slow
def test_a_killed_engine_actor_loses_no_sample(ray_local, openai_stub, monkeypatch, tmp_path):
    """The teacher's engine actor is killed while its requests are in flight: Ray restarts it and sends its chunks
    again, and every sample is graded exactly once (in the buckets and the store)."""
    import os
    import signal

    monkeypatch.setenv("STUB_API_KEY", "stub-key")
    questions = make_questions("arith", 6, 1, 3, seed=12)
    url = write_questions(questions, str(tmp_path / "questions.parquet"))
    arrived = threading.Event()

    def delay(text: str) -> float:
        arrived.set()
        return 1.0

    killed: list[int] = []

    def kill() -> None:
        arrived.wait(120)
        for pid in os.listdir("/proc"):  # the actor's process, by the title Ray gives it
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    title = f.read().decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::Generator"):
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))

    with openai_stub(delay_s=delay) as server:
        teacher = TeacherConfig(
            name="stub", engine=EngineConfig(kind="openai", model="stub", base_url=server.base_url,
                                             api_key_env="STUB_API_KEY"),
            resources=ResourcesConfig(batch_size=4, num_cpus=0.5))
        store = GenerationStore(str(tmp_path / "generations"))
        killer = threading.Thread(target=kill)
        killer.start()
        out = curate_adaptive_stream(store, url, teacher, A.SamplingPlan(target=1, max_samples=4),
                                     str(tmp_path / "work"), Grading(None, True, None, num_graders=1))
        killer.join()
        answered = len(server.requests)
    assert len(killed) == 1
    graded = read_buckets(out.graded_url)
    key = [C.QUESTION_ID, C.SAMPLE_INDEX]
    assert len(graded) == 18 and not graded.duplicated(key).any()  # 6 questions x 3 samples, each once
    assert (out.stats[A.SAMPLED] == 3).all() and out.counters["generated"] == 18
    assert len(store.load("stub")) == 18 and answered > 18  # the killed actor's requests were sent again
