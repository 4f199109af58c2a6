"""The engine contract every engine module implements, and the helpers they share; a leaf of ``generation``.

The registry (:mod:`ray_distill.generation.engines`) imports an engine's module when it builds that engine; the
engine modules (:mod:`.hf_engine`, :mod:`.openai_engine`) import only this module, never the registry.

Contract: ``generate(messages, sampling, seeds)`` returns, per prompt ``i``, one :class:`Completion` per seed in
``seeds[i]``, in seed order; a request that fails comes back with ``finish_reason == "error"`` and the message in
``error`` (:func:`error_completion`), never failing the batch.
"""

from __future__ import annotations

from typing import Protocol, TypedDict

from ray_distill.config import SamplingConfig

FINISH_STOP, FINISH_LENGTH, FINISH_ERROR = "stop", "length", "error"


class Completion(TypedDict):
    text: str
    num_tokens: int
    finish_reason: str  # "stop" | "length" | "error"
    error: str  # "" unless finish_reason == "error"
    prompt_tokens: int  # tokens of the prompt as the engine counted them (-1: unknown)


class Engine(Protocol):
    def generate(
        self, messages: list[list[dict]], sampling: SamplingConfig, seeds: list[list[int]]
    ) -> list[list[Completion]]: ...


def error_completion(err: BaseException | str) -> Completion:
    error = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return Completion(text="", num_tokens=0, finish_reason=FINISH_ERROR, error=error, prompt_tokens=0)


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """``text`` up to (without) its first stop string, and whether one was found (vLLM's convention)."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def check_lengths(messages: list[list[dict]], seeds: list[list[int]]) -> None:
    if len(messages) != len(seeds):
        raise ValueError(f"{len(messages)} prompts but {len(seeds)} seed lists")
