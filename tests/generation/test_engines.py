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
    from ray_distill.generation.engines import ScriptedEngine, cut_at_stop
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
