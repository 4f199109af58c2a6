"""HFEngine (transformers generate, CPU) on the random micro student: per-seed samples, tokens, errors."""

from __future__ import annotations

import pytest

from ray_distill.config import EngineConfig, SamplingConfig
from ray_distill.generation.engines import build_engine, question_messages


def test_hf_engine_samples_are_per_seed_with_token_counts(tiny_student_path):
    engine = build_engine(EngineConfig(kind="hf", model=tiny_student_path, dtype="float32", max_model_len=64))
    sampling = SamplingConfig(temperature=1.0, max_tokens=12)
    out = engine.generate([question_messages("1+2"), question_messages("9-4+1")], sampling, [[5, 6, 5], [6]])

    assert [len(c) for c in out] == [3, 1]
    flat = [c for per_prompt in out for c in per_prompt]
    assert all(c["error"] == "" and c["finish_reason"] in ("stop", "length") for c in flat)
    assert all(1 <= c["num_tokens"] <= 12 for c in flat)
    assert [c["prompt_tokens"] for c in flat] == [4, 4, 4, 6]  # chat template "<question>=", a token per char
    assert out[0][0]["text"] == out[0][2]["text"] != out[0][1]["text"]  # same seed -> same text
    # a sample does not depend on what else is in the batch
    ((alone,),) = engine.generate([question_messages("9-4+1")], sampling, [[6]])
    assert alone == out[1][0]

    ((greedy_a, greedy_b),) = engine.generate([question_messages("1+2")], SamplingConfig(temperature=0, max_tokens=12),
                                              [[1, 2]])
    assert greedy_a == greedy_b and greedy_a["finish_reason"] in ("stop", "length")


def test_hf_engine_prompt_too_long_is_an_error_completion(tiny_student_path):
    engine = build_engine(EngineConfig(kind="hf", model=tiny_student_path, dtype="float32", max_model_len=32))
    bad, good = engine.generate([question_messages("1+" * 40 + "1"), question_messages("1+2")],
                                SamplingConfig(max_tokens=4), [[1, 2], [3]])
    assert [c["finish_reason"] for c in bad] == ["error", "error"] and "max_model_len 32" in bad[0]["error"]
    assert good[0]["error"] == "" and good[0]["num_tokens"] >= 1


@pytest.mark.slow
def test_hf_engine_keeps_the_reasoning_block_its_template_opens(smollm2_path):
    """The real checkpoint behind a template whose generation prompt ends in "<think>\\n": the completion is
    the whole assistant turn, opening included; the model's own template opens nothing."""
    from pathlib import Path

    from ray_distill.models import resolve_chat_template

    think = resolve_chat_template(str(Path(__file__).resolve().parents[2] / "jobs/templates/chatml_think.jinja"), "t")
    sampling = SamplingConfig(temperature=0.7, max_tokens=8)
    conv = [question_messages("What is 13+14? Put the final answer in \\boxed{}.")]
    ((c,),) = build_engine(EngineConfig(kind="hf", model=smollm2_path, dtype="float32", chat_template=think)
                           ).generate(conv, sampling, [[1]])
    ((plain,),) = build_engine(EngineConfig(kind="hf", model=smollm2_path, dtype="float32")).generate(conv, sampling, [[1]])
    assert c["error"] == "" and c["text"].startswith("<think>\n") and len(c["text"]) > len("<think>\n")
    assert 1 <= c["num_tokens"] <= 8  # generated tokens only: the opening was part of the prompt
    assert plain["error"] == "" and not plain["text"].startswith("<think>")
