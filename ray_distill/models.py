"""Model references, loading and chat templates: what every stage that touches a model shares.

A job names a model (student or engine) in one of three ways, and each travels as one string, a
*model reference*:

- a Hugging Face hub id ``org/name`` with an optional ``revision``: the reference is ``org/name`` or
  ``org/name@revision``; every process loads it through Hugging Face's own cache (``HF_HOME``,
  ``HF_HUB_OFFLINE``, ``HF_TOKEN`` are honoured), so each node resolves it itself — it is never turned
  into a driver-local path;
- a local directory or an fsspec URL of a ``save_pretrained`` checkpoint (a remote URL is copied
  into a local cache by the process that loads it);
- a built-in preset (``ray_distill.presets``), built once into ``<storage>/cache/models``.

    ref = model_ref("Qwen/Qwen2.5-1.5B-Instruct", revision="main")   # -> "Qwen/Qwen2.5-1.5B-Instruct"
    tokenizer = load_tokenizer(ref, chat_template=None)

Chat templates: a per-model ``chat_template`` override (a Jinja string, or a file on any fsspec URL)
and ``chat_template_kwargs`` (e.g. ``{"enable_thinking": true}`` for Qwen3) are applied wherever the
model's prompt is rendered (generation, student sampling, training). When the rendered generation
prompt ends inside an opened ``<think>`` block (QwQ, DeepSeek-R1, R1-Distill templates pre-fill
``<think>\\n``), :func:`render_prompt` returns that opening too, and the engines put it back in front of
the completion, so the stored and graded text is the whole assistant turn.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass

import fsspec

from ray_distill.config import ConfigError
from ray_distill.errors import UNEXPECTED, ModelLoadError, exit_code

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_JINJA = re.compile(r"{[{%#]")


def is_hub_id(name: str) -> bool:
    """True for ``org/name`` (or ``name``) that is not an existing local path nor a URL."""
    base = name.split("@", 1)[0]
    return "://" not in name and not os.path.exists(name) and bool(_HUB_ID.match(base)) and ".." not in base


def model_ref(model: str, revision: str | None = None) -> str:
    """One string for a model and its revision: ``org/name@rev`` for hub ids (``main``/None: no suffix);
    a path or URL stays as it is (it names one snapshot already)."""
    if revision and revision != "main" and is_hub_id(model) and "@" not in model:
        return f"{model}@{revision}"
    return model


def split_ref(ref: str) -> tuple[str, str | None]:
    """``(name, revision)`` of a reference made by :func:`model_ref` (revision None: the default)."""
    if is_hub_id(ref) and "@" in ref:
        name, revision = ref.split("@", 1)
        return name, revision
    return ref, None


def check_model(model: str, key: str) -> None:
    """Raise :class:`ConfigError` (one line naming ``key``) unless ``model`` is an existing directory, a URL or
    a hub id."""
    if "://" in model or os.path.isdir(model) or is_hub_id(model):
        return
    raise ConfigError(f"{key}: {model!r} is neither a local directory, a URL nor a hub id (org/name)")


@contextmanager
def loadable(ref: str):
    """Yield ``(name_or_path, revision)`` for ``from_pretrained``: a hub id as it is (Hugging Face's cache
    does the rest), a local directory, or a local copy of a remote URL."""
    from ray_distill.data.fs import absolute, is_local, local_dir

    name, revision = split_ref(ref)
    try:
        if is_hub_id(ref):
            yield name, revision
        elif is_local(name):
            yield absolute(name), None
        else:
            yield local_dir(name), None
    except (OSError, ValueError) as err:  # no such repo or folder, no config.json or tokenizer, offline, 401
        if exit_code(err) != UNEXPECTED:  # already a user error of its own family
            raise
        raise ModelLoadError(f"model {ref!r} does not load: {_first_line(err)}") from err


def load_tokenizer(ref: str, chat_template: str | None = None):
    """The tokenizer of ``ref``, with ``chat_template`` (resolved text) replacing the model's own."""
    from transformers import AutoTokenizer

    with loadable(ref) as (name, revision):
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


class TokenIds:
    """``text -> token ids`` (no special tokens added) of a fast tokenizer, as ``tokenizer(text,
    add_special_tokens=False)["input_ids"]`` gives them, carried as the serialized Rust ``tokenizers`` backend
    that transformers built (:func:`token_ids`). Grading and selection actors count and compare tokens with it:
    rebuilding it takes ~0.01 s, where loading the tokenizer through transformers takes ~4 s on 2 cores
    (``from transformers import AutoTokenizer`` imports torch and sklearn) in every fresh actor process.
    The backend is the one transformers built, not the checkpoint's ``tokenizer.json``: transformers may rewrite
    the latter's pre-tokenizer (e.g. from the model's ``model_type``)."""

    def __init__(self, backend_json: str):
        self.backend_json = backend_json
        self._backend = None

    def __getstate__(self) -> dict:
        return {"backend_json": self.backend_json}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["backend_json"])

    def __call__(self, text: str) -> list[int]:
        if self._backend is None:
            from tokenizers import Tokenizer

            self._backend = Tokenizer.from_str(self.backend_json)
        return self._backend.encode(text, add_special_tokens=False).ids


def token_ids(ref: str) -> TokenIds | None:
    """:class:`TokenIds` of ``ref``'s tokenizer, loaded here (through transformers); None for a tokenizer with no
    Rust backend (a slow, Python-only one): such a tokenizer is loaded where it is used."""
    backend = getattr(load_tokenizer(ref), "backend_tokenizer", None)
    return TokenIds(backend.to_str()) if backend is not None else None


def load_causal_lm(ref: str, dtype=None):
    """``AutoModelForCausalLM`` of ``ref`` (float32 unless ``dtype`` says otherwise)."""
    import torch
    from transformers import AutoModelForCausalLM

    with loadable(ref) as (name, revision):
        return AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=dtype or torch.float32)


def resolve_chat_template(value: str | None, key: str) -> str | None:
    """A ``chat_template`` setting as template text: a Jinja string is used as it is, anything else is
    read as a file (any fsspec URL). A missing file is a :class:`ConfigError` naming ``key``."""
    if value is None or _JINJA.search(value):
        return value
    try:
        with fsspec.open(value, "r", encoding="utf-8") as f:
            return f.read()
    except (FileNotFoundError, OSError) as err:
        raise ConfigError(f"{key}: chat template file {value!r} cannot be read ({type(err).__name__})") from None


@dataclass(frozen=True)
class Prompt:
    token_ids: list[int]
    opened: str  # reasoning text the template opened for the assistant (e.g. "<think>\n"), else ""


def render_prompt(tokenizer, conv: list[dict], api: str = "chat", chat_template_kwargs: dict | None = None,
                  chat_template: str | None = None) -> Prompt:
    """Token ids of a conversation through the tokenizer's chat template (``chat_template``, text, when
    given: passed on each call, since vLLM's tokenizer renders through copies of itself), ready for the
    assistant turn (``api="completions"``: the last user message as a raw prompt), and the opening of a
    reasoning block that the template pre-filled (:func:`opened_reasoning`)."""
    if api == "completions":
        return Prompt(tokenizer.encode(last_user_content(conv), add_special_tokens=False), "")
    text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True,
                                         chat_template=chat_template, **(chat_template_kwargs or {}))
    return Prompt(tokenizer.encode(text, add_special_tokens=False), opened_reasoning(text, last_user_content(conv)))


def opened_reasoning(prompt_text: str, last_user: str) -> str:
    """The part of a rendered generation prompt from an unclosed ``<think>`` on: ``"<think>\\n"`` for a
    template that pre-fills the reasoning block, ``""`` otherwise. Only the text after the last user
    message counts (a system prompt or a question may mention the tags)."""
    at = prompt_text.rfind(last_user) if last_user else -1
    tail = prompt_text[at + len(last_user):] if at >= 0 else prompt_text
    start = tail.rfind(THINK_OPEN)
    if start < 0 or THINK_CLOSE in tail[start:]:
        return ""
    return tail[start:]


def last_user_content(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return m["content"]
    raise ValueError("no user message in the conversation")


def resolve_engine(engine, storage: str, key: str):
    """An ``EngineConfig`` as engine actors load it: a preset built (once) into ``<storage>/cache/models``
    and named by its local path, a ``chat_template`` file read into its text, a hub id left as it is
    (checked to look like one). ``key`` names the engine in errors (``teachers.0.engine``)."""
    from ray_distill.presets import build_preset

    update: dict = {}
    if engine.kind in ("vllm", "hf"):
        if engine.preset:
            update["model"] = build_preset(engine.preset, storage)
        else:
            check_model(engine.model, f"{key}.model")
    if engine.chat_template:
        update["chat_template"] = resolve_chat_template(engine.chat_template, f"{key}.chat_template")
    return engine.model_copy(update=update) if update else engine


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
