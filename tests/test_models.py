"""Model references, chat templates and reasoning blocks (ray_distill.models), on the real SmolLM2 tokenizer
(BPE, ChatML) as well as on the tiny student's character tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_distill.config import ConfigError
from ray_distill.models import (
    TokenIds,
    check_model,
    is_hub_id,
    load_tokenizer,
    model_ref,
    opened_reasoning,
    render_prompt,
    resolve_chat_template,
    split_ref,
    token_ids,
)
from ray_distill.training.data import (
    IGNORE,
    check_reasoning_kept,
    encode_example,
    preflight,
)

THINK_TEMPLATE = str(Path(__file__).resolve().parents[1] / "jobs" / "templates" / "chatml_think.jinja")
ANSWER = "<think>\nWe add 13 and 14: 13+14=27.\n</think>\nThe answer is \\boxed{27}."
CONV = [{"role": "user", "content": "What is 13+14?"}, {"role": "assistant", "content": ANSWER}]
# A DeepSeek-R1-Distill-style template: assistant turns keep only what follows </think>.
DROPS_REASONING = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|im_start|>user\n{{ m['content'] }}<|im_end|>\n"
    "{% else %}{% set c = m['content'] %}{% if '</think>' in c %}{% set c = c.split('</think>')[-1] %}{% endif %}"
    "<|im_start|>assistant\n{{ c }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


def test_hub_ids_paths_and_urls(tmp_path):
    assert is_hub_id("Qwen/Qwen2.5-1.5B-Instruct") and is_hub_id("gpt2") and is_hub_id("org/name@v1.0")
    assert not is_hub_id(str(tmp_path)) and not is_hub_id("s3://bucket/model") and not is_hub_id("../x/y")
    assert model_ref("Qwen/Qwen2.5-1.5B-Instruct", "main") == "Qwen/Qwen2.5-1.5B-Instruct"
    assert model_ref("Qwen/Qwen2.5-1.5B-Instruct", "abc123") == "Qwen/Qwen2.5-1.5B-Instruct@abc123"
    assert model_ref(str(tmp_path), "abc123") == str(tmp_path)  # a path names one snapshot already
    assert split_ref("Qwen/Qwen2.5-1.5B-Instruct@abc123") == ("Qwen/Qwen2.5-1.5B-Instruct", "abc123")
    assert split_ref(str(tmp_path)) == (str(tmp_path), None)
    check_model("s3://bucket/student", "student.model")
    with pytest.raises(ConfigError, match=r"^student\.model: 'a/b/c' is neither"):
        check_model("a/b/c", "student.model")


def test_chat_template_from_string_or_file(tmp_path):
    assert resolve_chat_template("{{ messages[0]['content'] }}", "k") == "{{ messages[0]['content'] }}"
    (tmp_path / "t.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert resolve_chat_template(str(tmp_path / "t.jinja"), "k").startswith("{% for m")
    with pytest.raises(ConfigError, match=r"^teachers\.0\.engine\.chat_template: chat template file"):
        resolve_chat_template(str(tmp_path / "missing.jinja"), "teachers.0.engine.chat_template")


def test_opened_reasoning_only_after_the_last_user_message():
    assert opened_reasoning("<|user|>q<|assistant|><think>\n", "q") == "<think>\n"
    assert opened_reasoning("<|user|>q<|assistant|>", "q") == ""
    assert opened_reasoning("<|user|>q<|assistant|><think></think>\n", "q") == ""  # thinking switched off
    assert opened_reasoning("sys: answer in <think> tags<|user|>q<|assistant|>", "q") == ""  # in the system prompt
    assert opened_reasoning("<|user|>why <think>?<|assistant|>", "why <think>?") == ""  # in the question


def test_real_template_prefilling_think_is_detected(smollm2_path):
    plain = load_tokenizer(smollm2_path)
    think = load_tokenizer(smollm2_path, resolve_chat_template(THINK_TEMPLATE, "chat_template"))
    assert render_prompt(plain, CONV[:1]).opened == ""
    prompt = render_prompt(think, CONV[:1])
    assert prompt.opened == "<think>\n"
    assert think.decode(prompt.token_ids).endswith("<|im_start|>assistant\n<think>\n")
    assert render_prompt(think, CONV[:1], api="completions").opened == ""  # a raw prompt has no template


def test_chat_template_kwargs_reach_the_template(smollm2_path):
    tpl = ("{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}"
           "{% if enable_thinking %}<think>\n{% else %}<think>\n\n</think>\n\n{% endif %}{% endif %}")
    tok = load_tokenizer(smollm2_path, tpl)
    assert render_prompt(tok, CONV[:1], chat_template_kwargs={"enable_thinking": True}).opened == "<think>\n"
    assert render_prompt(tok, CONV[:1], chat_template_kwargs={"enable_thinking": False}).opened == ""


@pytest.mark.parametrize("template", [None, THINK_TEMPLATE])
def test_bpe_chatml_supervises_exactly_the_assistant_turn_and_its_end_token(smollm2_path, template):
    tok = load_tokenizer(smollm2_path, resolve_chat_template(template, "chat_template"))
    ex = encode_example(tok, CONV, max_seq_len=512)
    supervised = tok.decode([t for t in ex["labels"] if t != IGNORE])
    opened = render_prompt(tok, CONV[:1]).opened  # a pre-filled "<think>\n" is part of the prompt
    assert supervised == ANSWER.removeprefix(opened) + "<|im_end|>"
    first = ex["labels"].index(next(t for t in ex["labels"] if t != IGNORE))
    assert tok.decode(ex["input_ids"][:first]).endswith("<|im_start|>assistant\n" + opened)


def test_preflight_refuses_a_template_that_drops_the_reasoning(smollm2_path):
    tok = load_tokenizer(smollm2_path, DROPS_REASONING)
    with pytest.raises(ConfigError, match=r"drops the <think>\.\.\.</think> reasoning.*student\.chat_template"):
        preflight(tok, [{"messages": CONV}], max_seq_len=512)
    check_reasoning_kept(tok, [CONV[0], {"role": "assistant", "content": "\\boxed{27}"}])  # nothing to drop
    report = preflight(load_tokenizer(smollm2_path), [{"messages": CONV}], max_seq_len=512)
    assert report["example_supervised"] == ANSWER + "<|im_end|>"


TEXTS = ["What is 13+14?", ANSWER, "  leading spaces, <|im_start|> a special token's text, ünïcödé ≠ ascii\n\n",
         "def f(x):\n\treturn x ** 2  # code", ""]


@pytest.mark.parametrize("which", ["micro", "smollm2"])
def test_token_ids_are_the_tokenizers_without_transformers(which, tiny_student_path, smollm2_path):
    """What grading and selection actors count and compare tokens with (``TokenIds``, built in the driver, the
    Rust backend alone in the actor) gives the ids transformers' tokenizer gives: on the micro student's
    character tokenizer (whose pre-tokenizer transformers rewrites from the model type on loading) and on
    SmolLM2's BPE; after pickling, as an actor receives it."""
    import pickle

    from ray_distill.curation.adapters import token_counter

    path = tiny_student_path if which == "micro" else smollm2_path
    tokenizer, count = load_tokenizer(path), pickle.loads(pickle.dumps(token_counter(path)))
    assert isinstance(count, TokenIds)
    for text in TEXTS:
        assert count(text) == tokenizer(text, add_special_tokens=False)["input_ids"], text


def test_token_ids_rebuild_without_importing_transformers(tiny_student_path):
    import pickle
    import subprocess
    import sys

    counter = pickle.dumps(token_ids(tiny_student_path))
    code = ("import pickle, sys; count = pickle.loads(sys.stdin.buffer.read()); "
            "print(len(count('1+2')), 'transformers' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], input=counter, capture_output=True, check=True)
    assert out.stdout.decode().split() == ["3", "False", "False"], out.stdout + out.stderr
