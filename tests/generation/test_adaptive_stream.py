"""Adaptive sampling with no wave (curation.adaptive_stream) against a real local Ray cluster and an
OpenAI-compatible stub server (conftest.py): a question answered slowly holds no other question's next round; the
samples and decisions are those of the rounds replayed over all M samples (what the data-budget search assumes);
a killed engine actor loses no sample; the LLM judge's verdicts go into the buckets."""

from __future__ import annotations

import threading
import time

import pytest

from ray_distill import columns as C
from ray_distill.config import EngineConfig, ResourcesConfig, TeacherConfig
from ray_distill.curation import adaptive as A
from ray_distill.curation.adaptive_stream import QuestionState, curate_adaptive_stream
from ray_distill.config import JudgeConfig
from ray_distill.curation.plane import Grading, curate, read_buckets, write_questions
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

    def teacher(server) -> TeacherConfig:
        return TeacherConfig(name="stub", engine=EngineConfig(kind="openai", model="stub", base_url=server.base_url,
                                                              api_key_env="STUB_API_KEY"),
                             resources=ResourcesConfig(batch_size=64, num_cpus=0.5))  # one chunk: every round 1

    with openai_stub(delay_s=delay) as server:
        out = curate_adaptive_stream(GenerationStore(str(tmp_path / "stream" / "generations")), url, teacher(server),
                                     plan, str(tmp_path / "stream" / "work"), grading)
    times = {q: sorted(t for text, t in arrivals if sent[text] == q) for q in sent.values()}
    answered = times[slow[C.QUESTION_ID]][0] + SLOW_S  # when the slow question's round 1 was answered
    assert all(len(ts) == 3 for ts in times.values())  # round 1: 2 samples, round 2: 1
    late = {q: round(ts[2] - answered, 2) for q, ts in times.items() if q != slow[C.QUESTION_ID] and ts[2] >= answered}
    assert not late, f"round 2 of these questions waited for the slow one's round 1 (s after it): {late}"
    assert out.rounds == 2 and set(out.final.values()) <= {A.ENOUGH, A.HOPELESS} and A.ENOUGH in out.final.values()
    assert (out.stats[A.SAMPLED] == 3).all() and len(out.stats) == 6

    # The rounds replayed over all M samples of every question (fixed M, the same seeds): the same decisions,
    # counters and samples.
    with openai_stub() as server:
        fixed = curate(GenerationStore(str(tmp_path / "fixed" / "generations")), url, teacher(server), 4,
                       str(tmp_path / "fixed" / "work"), grading).read_graded()
    drawn, final = A.replay(fixed, list(sent.values()), plan)
    assert final == out.final
    assert A.question_stats(drawn).sort_index().equals(out.stats.sort_index())
    key = [C.QUESTION_ID, C.SAMPLE_INDEX]
    streamed = A.latest_samples(read_buckets(out.graded_url)).sort_values(key)
    assert streamed[C.COMPLETION].tolist() == drawn.sort_values(key)[C.COMPLETION].tolist()


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


@pytest.mark.slow
def test_the_llm_judge_grades_every_sample_of_the_rounds(ray_local, openai_stub, monkeypatch, tmp_path):
    """verify.judge on (mode always, the scripted judge): every graded row in the buckets carries its verdict, the
    judge's counters come back, and the decisions are those without it (this judge agrees with math-verify)."""
    monkeypatch.setenv("STUB_API_KEY", "stub-key")
    questions = make_questions("arith", 6, 1, 3, seed=11)
    url = write_questions(questions, str(tmp_path / "questions.parquet"))
    plan = A.SamplingPlan(target=1, max_samples=4)
    judge = JudgeConfig(mode="always", engine={"kind": "scripted", "persona": "judge"},
                        resources={"batch_size": 8, "num_cpus": 0.5})
    results = []
    with openai_stub() as server:
        teacher = TeacherConfig(name="stub", engine=EngineConfig(kind="openai", model="stub", base_url=server.base_url,
                                                                 api_key_env="STUB_API_KEY"),
                                resources=ResourcesConfig(batch_size=4, num_cpus=0.5))
        for name, j in (("judged", judge), ("plain", None)):
            results.append(curate_adaptive_stream(GenerationStore(str(tmp_path / "generations")), url, teacher, plan,
                                                  str(tmp_path / name), Grading(None, True, None, judge=j)))
    judged, plain = results
    rows = read_buckets(judged.graded_url)
    assert len(rows) == 18 and (rows[C.JUDGE_VERDICT] != "").all()
    assert judged.judge["judge/calls"] > 0 and not plain.judge
    assert judged.final == plain.final and judged.stats.sort_index().equals(plain.stats.sort_index())
