"""Engine contract on the scripted engine (no Ray, no vLLM)."""

from __future__ import annotations

import pytest

from ray_distill.config import EngineConfig, SamplingConfig
from ray_distill.generation.engines import ScriptedEngine, build_engine, question_messages
from ray_distill.synthetic.teachers import write_solution


def test_scripted_engine_one_completion_per_seed():
    engine = build_engine(EngineConfig(kind="scripted", persona="concise"))
    assert isinstance(engine, ScriptedEngine)
    prompts = [question_messages("9+0-9"), question_messages("max(1,5)")]
    out = engine.generate(prompts, SamplingConfig(n=2), [[1, 2], [3, 4]])
    assert [len(c) for c in out] == [2, 2]
    assert out[0][1]["text"] == write_solution("concise", "9+0-9", 2)
    assert out[1][0] == {"text": write_solution("concise", "max(1,5)", 3), "num_tokens": len(out[1][0]["text"]),
                         "finish_reason": "stop", "error": "", "prompt_tokens": len("max(1,5)")}


def test_scripted_engine_bad_request_does_not_fail_batch():
    engine = ScriptedEngine("verbose")
    out = engine.generate([question_messages("not a question"), question_messages("1+2")], SamplingConfig(), [[0], [0]])
    assert out[0][0]["finish_reason"] == "error" and "no synthetic family" in out[0][0]["error"]
    assert out[1][0]["finish_reason"] == "stop" and out[1][0]["text"].endswith("\\boxed{3}")


def test_scripted_engine_truncates_at_max_tokens():
    (c,), = ScriptedEngine("concise").generate([question_messages("1+2-3+4")], SamplingConfig(max_tokens=5), [[0]])
    assert c["finish_reason"] == "length" and c["num_tokens"] == 5 and len(c["text"]) == 5


def test_build_engine_rejects_unknown_persona():
    with pytest.raises(ValueError, match="unknown teacher persona"):
        build_engine(EngineConfig(kind="scripted", persona="nobody"))


def test_stop_strings_cut_the_completion_and_change_the_store_key():
    from ray_distill.config import EngineConfig, SamplingConfig, TeacherConfig
    from ray_distill.generation.engines import ScriptedEngine
    from ray_distill.generation.types import cut_at_stop
    from ray_distill.generation.store import generation_key, teacher_fingerprint

    assert cut_at_stop("a;b;c", [";", "c"]) == ("a", True) and cut_at_stop("abc", ["x"]) == ("abc", False)
    conv = [[{"role": "user", "content": "9+0-9"}]]
    full = ScriptedEngine("concise").generate(conv, SamplingConfig(), [[3]])[0][0]["text"]
    cut = ScriptedEngine("concise").generate(conv, SamplingConfig(stop=[";"]), [[3]])[0][0]["text"]
    assert cut == full[: full.index(";")]
    plain = TeacherConfig(name="t", engine=EngineConfig(kind="scripted", persona="concise"))
    stopped = plain.model_copy(update={"sampling": SamplingConfig(stop=[";"])})
    assert "stop" not in teacher_fingerprint(plain)["sampling"]  # keys of stores made before 'stop' stay valid
    assert generation_key("q", teacher_fingerprint(plain), 0) != generation_key("q", teacher_fingerprint(stopped), 0)


def test_vllm_output_gets_the_opened_reasoning_back_and_cpu_settings_avoid_the_seed_crash():
    from types import SimpleNamespace

    from ray_distill.generation.engines import VLLM_CPU_SETTINGS, _to_completion, vllm_engine_kwargs

    out = SimpleNamespace(text="13+14=27</think>\\boxed{27}", token_ids=[1, 2, 3], finish_reason="stop")
    c = _to_completion(out, prompt_tokens=20, opened="<think>\n")
    assert c["text"] == "<think>\n13+14=27</think>\\boxed{27}" and c["num_tokens"] == 3
    assert _to_completion(out, 20)["text"] == out.text
    # no chunked prefill on CPU: a discarded partial-prefill token makes vLLM rewind a seeded CPU generator
    assert VLLM_CPU_SETTINGS == {"enable_chunked_prefill": False, "enable_prefix_caching": False}
    assert vllm_engine_kwargs() == VLLM_CPU_SETTINGS


def test_store_key_names_preset_chat_template_and_its_variables():
    from ray_distill.config import EngineConfig, TeacherConfig
    from ray_distill.generation.store import teacher_fingerprint

    def fp(**engine):
        return teacher_fingerprint(TeacherConfig(name="t", engine=EngineConfig(kind="vllm", **engine)))

    plain = fp(model="org/name")
    assert "chat_template" not in plain and "chat_template_kwargs" not in plain  # old stores keep their keys
    assert fp(model="org/name", chat_template="{{ x }}")["chat_template"] != fp(model="org/name", chat_template="{{ y }}")["chat_template"]
    assert fp(model="org/name", chat_template_kwargs={"enable_thinking": True})["chat_template_kwargs"] == {"enable_thinking": True}
    # a preset is keyed by its name and build version, wherever a job's cache put its files
    engine = EngineConfig(kind="vllm", preset="smollm2-135m")
    built = TeacherConfig(name="t", engine=engine.model_copy(update={"model": "/some/cache/smollm2-135m-v1"}))
    assert teacher_fingerprint(built)["model"] == "preset:smollm2-135m-v1"
