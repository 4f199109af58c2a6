"""Generation engines behind one contract, built from config through a plain dict registry.

    engine = build_engine(EngineConfig(kind="scripted", persona="concise"))
    completions = engine.generate([[{"role": "user", "content": "9+0-9"}]], SamplingConfig(n=2), [[11, 12]])
    completions[0][1]["text"]   # the sample drawn with seed 12

Contract: ``generate(messages, sampling, seeds)`` returns, per prompt ``i``, one :class:`Completion`
per seed in ``seeds[i]`` (normally ``sampling.n`` of them; the generation store may ask for fewer),
in seed order. Each seed is one request, so the same seed gives the same text. A request that
fails comes back with ``finish_reason == "error"`` and the message in ``error``; it never fails the
batch. Engines ignore ``sampling.n`` and ``sampling.seed``: the caller derives per-sample seeds.

Engines: ``scripted`` (synthetic personas), ``vllm`` (``vllm.LLM`` in the actor; in the Ray Data
pipeline continuously batched across batches, :mod:`.continuous`), ``openai`` (any
OpenAI-compatible endpoint, :mod:`.openai_engine`), ``hf`` (transformers ``generate``, :mod:`.hf_engine`).
The contract's types live in the leaf :mod:`.types`: an engine module imports them, not this registry, which
imports an engine's module only when it builds that engine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable

from pydantic import SecretStr

from ray_distill.config import EngineConfig, SamplingConfig
from ray_distill.generation.types import (
    FINISH_LENGTH,
    FINISH_STOP,
    Completion,
    Engine,
    check_lengths,
    cut_at_stop,
    error_completion,
)
from ray_distill.models import last_user_content, loadable, model_ref, render_prompt
from ray_distill.synthetic.judge import JUDGES
from ray_distill.synthetic.teachers import PERSONAS, write_solution

logger = logging.getLogger(__name__)

# How a question row becomes chat messages. Part of every generation-store key: change the version
# when the prompt construction changes.
PROMPT_TEMPLATE = "user:{question}"
PROMPT_TEMPLATE_HASH = hashlib.sha256(PROMPT_TEMPLATE.encode()).hexdigest()[:16]


def question_messages(question: str) -> list[dict]:
    """The chat messages for one question (see :data:`PROMPT_TEMPLATE`)."""
    return [{"role": "user", "content": question}]


def resolve_api_key(cfg: EngineConfig) -> SecretStr | None:
    """The key from the environment variable named by ``cfg.api_key_env`` (None when not configured)."""
    if cfg.api_key_env is None:
        return None
    value = os.environ.get(cfg.api_key_env, "")
    if not value:
        from ray_distill.errors import MissingVariable

        raise MissingVariable(f"engine 'openai' ({cfg.model} at {cfg.base_url}): environment variable "
                         f"{cfg.api_key_env} named by api_key_env is not set")
    from ray_distill.redact import register_secret

    register_secret(value)  # masked in this process's logs and errors, whatever the variable's name
    return SecretStr(value)


class ScriptedEngine:
    """A scripted teacher persona (``ray_distill.synthetic.teachers``) or judge (``synthetic.judge``, whose
    reply to a judge prompt depends on the prompt only); tokens are characters.

    Temperature and top_p do not apply; ``max_tokens`` truncates like a real engine would.
    """

    def __init__(self, persona: str):
        if persona not in PERSONAS and persona not in JUDGES:
            raise ValueError(f"unknown teacher persona {persona!r}; known: {sorted(PERSONAS)} (judges: {sorted(JUDGES)})")
        self.persona = persona

    def generate(
        self, messages: list[list[dict]], sampling: SamplingConfig, seeds: list[list[int]]
    ) -> list[list[Completion]]:
        check_lengths(messages, seeds)
        return [[self._one(conv, sampling, s) for s in prompt_seeds] for conv, prompt_seeds in zip(messages, seeds)]

    def _one(self, conv: list[dict], sampling: SamplingConfig, seed: int) -> Completion:
        try:
            question = last_user_content(conv)
            if self.persona in JUDGES:
                text = JUDGES[self.persona](question)
            else:
                text = write_solution(self.persona, question, seed)
        except Exception as err:  # one bad request must not fail the batch
            return error_completion(err)
        text, _ = cut_at_stop(text, sampling.stop)
        if len(text) > sampling.max_tokens:
            return Completion(text=text[: sampling.max_tokens], num_tokens=sampling.max_tokens,
                              finish_reason=FINISH_LENGTH, error="", prompt_tokens=len(question))
        return Completion(text=text, num_tokens=len(text), finish_reason=FINISH_STOP, error="",
                          prompt_tokens=len(question))


# vLLM's CPU build: no chunked prefill. With it, a prompt split across engine steps has its sampled token
# discarded, and vLLM then rewinds that request's seeded generator, which CPU generators refuse
# ("RuntimeError: CPU Generator does not use offset"): any batch whose prompts exceed one step's token
# budget (e.g. 60 SmolLM2 chat prompts x 2 seeded samples) crashed the engine. Without chunked prefill
# a prompt is always prefilled in one step, so every request keeps its own seed (same seed, same text).
# No prefix caching either: with it, a request's prefill reuses KV blocks that whichever earlier batch
# this engine actor happened to run left behind, so its logits (and a sampled text) could depend on the
# actor's history, i.e. on Ray Data's scheduling; on CPU a request's text then depends only on its own
# batch (fixed by the batch size) and seed, and two runs from scratch give the same samples.
VLLM_CPU_SETTINGS: dict = {"enable_chunked_prefill": False, "enable_prefix_caching": False}


class VLLMEngine:
    """``vllm.LLM`` with the model's chat template (or ``chat_template``); one request per sample
    (``n=1``, own seed). A reasoning block the template opens is put back in front of each completion."""

    def __init__(self, cfg: EngineConfig):
        from vllm import LLM  # imported here: vLLM is heavy and only needed inside engine actors

        start = time.perf_counter()
        with loadable(model_ref(cfg.model, cfg.revision)) as (model, revision):
            self.llm = LLM(model=model, revision=revision, dtype=cfg.dtype, max_model_len=cfg.max_model_len,
                           tensor_parallel_size=cfg.tensor_parallel_size, enforce_eager=cfg.enforce_eager,
                           **vllm_engine_kwargs(cfg.tensor_parallel_size))
        self.tokenizer = self.llm.get_tokenizer()
        self.chat_template, self.template_kwargs = cfg.chat_template, cfg.chat_template_kwargs
        self.api = cfg.api
        self.start_seconds = time.perf_counter() - start
        logger.info("vLLM engine for %s ready in %.1f s", cfg.model, self.start_seconds)

    def generate(
        self, messages: list[list[dict]], sampling: SamplingConfig, seeds: list[list[int]]
    ) -> list[list[Completion]]:
        """One synchronous wave: every request of the batch enqueued, then the engine run until all finish."""
        out, requests = self.requests(messages, sampling, seeds)
        pending: dict[str, tuple[int, int, str]] = {}  # request id -> (prompt index, sample position, opened)
        for i, j, prompt, params, opened in requests:
            try:  # vLLM validates at enqueue (e.g. prompt longer than max_model_len)
                (request_id,) = self.llm.enqueue(prompt, params, use_tqdm=False)
            except Exception as err:
                out[i][j] = error_completion(err)
                continue
            pending[_external_id(request_id)] = (i, j, opened)
        if pending:
            start = time.perf_counter()
            results = self.llm.wait_for_completion(use_tqdm=False)
            num_tokens = 0
            for res in results:
                i, j, opened = pending.pop(_external_id(res.request_id))
                out[i][j] = _to_completion(res.outputs[0], len(res.prompt_token_ids), opened)
                num_tokens += out[i][j]["num_tokens"]
            logger.info("vLLM generated %d samples, %d tokens in %.1f s", len(results), num_tokens,
                        time.perf_counter() - start)
        for i, j, _ in pending.values():
            out[i][j] = error_completion(RuntimeError("request finished without output"))
        return out

    def requests(
        self, messages: list[list[dict]], sampling: SamplingConfig, seeds: list[list[int]]
    ) -> tuple[list[list[Completion]], list[tuple[int, int, dict, object, str]]]:
        """The vLLM requests of a batch, one per sample: ``(prompt index, sample position, prompt,
        SamplingParams, reasoning opening)``; and the output lists, where a prompt that cannot be rendered
        already holds its errors (every other slot is overwritten by the caller)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        check_lengths(messages, seeds)
        out: list[list[Completion]] = [[error_completion(RuntimeError("not run"))] * len(s) for s in seeds]
        requests = []
        for i, (conv, prompt_seeds) in enumerate(zip(messages, seeds)):
            try:
                prompt = render_prompt(self.tokenizer, conv, self.api, self.template_kwargs, self.chat_template)
            except Exception as err:
                out[i] = [error_completion(err)] * len(prompt_seeds)
                continue
            for j, seed in enumerate(prompt_seeds):
                # only the finished output, as ``LLM.generate`` asks: vLLM's default builds a cumulative output
                # of every running request at every step, ~10% of the engine's throughput on the tiny student
                # (benchmarks/output_kind.py)
                params = SamplingParams(n=1, seed=seed, temperature=sampling.temperature, top_p=sampling.top_p,
                                        max_tokens=sampling.max_tokens, stop=sampling.stop or None,
                                        output_kind=RequestOutputKind.FINAL_ONLY)
                requests.append((i, j, {"prompt_token_ids": prompt.token_ids}, params, prompt.opened))
        return out, requests


def vllm_engine_kwargs(tensor_parallel_size: int = 1) -> dict:
    """Engine settings the CPU build needs (see :data:`VLLM_CPU_SETTINGS`); with tensor parallelism, the
    multiprocessing executor, so that the TP workers run inside this Ray actor on the GPUs Ray gave it
    (vLLM's Ray executor would ask the cluster for a placement group of its own from inside the actor)."""
    import torch

    kwargs = {} if torch.cuda.is_available() else dict(VLLM_CPU_SETTINGS)
    if tensor_parallel_size > 1:
        kwargs["distributed_executor_backend"] = "mp"
    return kwargs


def _external_id(request_id: str) -> str:
    """``LLM.enqueue`` returns vLLM's internal id ``<counter>-<8 random chars>`` while outputs carry the
    external ``<counter>``; both map to the counter."""
    return request_id.split("-", 1)[0]


def _to_completion(output, prompt_tokens: int, opened: str = "") -> Completion:
    """vLLM's ``CompletionOutput`` -> :class:`Completion` (an aborted request is an error); ``opened`` (a
    reasoning block the prompt opened) is put back in front: the text is the whole assistant turn."""
    if output.finish_reason not in (None, FINISH_STOP, FINISH_LENGTH):
        return error_completion(RuntimeError(f"request finished with {output.finish_reason!r}"))
    return Completion(text=opened + output.text, num_tokens=len(output.token_ids),
                      finish_reason=output.finish_reason or FINISH_STOP, error="", prompt_tokens=prompt_tokens)


def _openai_engine(cfg: EngineConfig, api_key: SecretStr | None) -> Engine:
    from ray_distill.generation.openai_engine import OpenAIEngine

    return OpenAIEngine(cfg, api_key if api_key is not None else resolve_api_key(cfg))


def _hf_engine(cfg: EngineConfig, api_key: SecretStr | None) -> Engine:
    from ray_distill.generation.hf_engine import HFEngine

    return HFEngine(cfg)


# kind -> builder(config, API key). The key is resolved by the driver (:func:`resolve_api_key`)
# and handed over as a SecretStr, so engine actors need not inherit the driver's environment.
ENGINES: dict[str, Callable[[EngineConfig, SecretStr | None], Engine]] = {
    "scripted": lambda cfg, api_key: ScriptedEngine(cfg.persona),
    "vllm": lambda cfg, api_key: VLLMEngine(cfg),
    "openai": _openai_engine,
    "hf": _hf_engine,
}


def build_engine(cfg: EngineConfig, api_key: SecretStr | None = None) -> Engine:
    if cfg.kind not in ENGINES:
        raise ValueError(f"unknown engine kind {cfg.kind!r}; known: {sorted(ENGINES)}")
    return ENGINES[cfg.kind](cfg, api_key)
