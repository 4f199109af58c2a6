"""Teacher generation with transformers ``generate``, for models vLLM cannot serve (CPU is fine).

    engine = HFEngine(EngineConfig(kind="hf", model="path/or/hub-id", dtype="float32"))

The model's own chat template renders the prompt. Each seed is one ``generate`` call after
``torch.manual_seed(seed)``, so a sample depends on its seed only, never on what else is in the batch.
That is slow next to vLLM; the engine exists for coverage, not throughput.
"""

from __future__ import annotations

import logging
import time

import torch

from ray_distill.config import EngineConfig, SamplingConfig
from ray_distill.generation.types import (
    FINISH_LENGTH,
    FINISH_STOP,
    Completion,
    check_lengths,
    cut_at_stop,
    error_completion,
)
from ray_distill.models import load_causal_lm, load_tokenizer, model_ref, render_prompt

logger = logging.getLogger(__name__)


class HFEngine:
    def __init__(self, cfg: EngineConfig):
        start = time.perf_counter()
        ref = model_ref(cfg.model, cfg.revision)
        self.tokenizer = load_tokenizer(ref, cfg.chat_template)
        self.template_kwargs = cfg.chat_template_kwargs
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_causal_lm(ref, dtype=cfg.dtype)
        self.model.to(self.device).eval()
        self.max_model_len = cfg.max_model_len or self.model.config.max_position_embeddings
        eos = self.model.generation_config.eos_token_id
        self.stop_ids = {*(eos if isinstance(eos, list) else [eos]), self.tokenizer.eos_token_id} - {None}
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.stop_ids)
        self.api = cfg.api
        self.start_seconds = time.perf_counter() - start
        logger.info("transformers engine for %s on %s ready in %.1f s", cfg.model, self.device, self.start_seconds)

    def generate(
        self, messages: list[list[dict]], sampling: SamplingConfig, seeds: list[list[int]]
    ) -> list[list[Completion]]:
        check_lengths(messages, seeds)
        out = []
        for conv, prompt_seeds in zip(messages, seeds):
            try:
                prompt = render_prompt(self.tokenizer, conv, self.api, self.template_kwargs)
                ids = prompt.token_ids
                if len(ids) >= self.max_model_len:
                    raise ValueError(f"prompt of {len(ids)} tokens does not fit max_model_len {self.max_model_len}")
            except Exception as err:  # one bad request must not fail the batch
                out.append([error_completion(err)] * len(prompt_seeds))
                continue
            out.append([self._sample(ids, sampling, seed, prompt.opened) for seed in prompt_seeds])
        return out

    def _sample(self, ids: list[int], sampling: SamplingConfig, seed: int, opened: str = "") -> Completion:
        """One sample; ``opened`` (a reasoning block the prompt opened) is put back in front of its text."""
        max_new = min(sampling.max_tokens, self.max_model_len - len(ids))
        do_sample = sampling.temperature > 0
        # top_k=0: no top-k cut (the model's generation_config may carry one; vLLM samples without it)
        params = dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0) \
            if do_sample else dict(do_sample=False)
        try:
            torch.manual_seed(seed)
            input_ids = torch.tensor([ids], device=self.device)
            with torch.inference_mode():
                if sampling.stop:
                    params.update(stop_strings=sampling.stop, tokenizer=self.tokenizer)
                seq = self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                          max_new_tokens=max_new, pad_token_id=self.pad_id, **params)
        except Exception as err:
            return error_completion(err)
        new = seq[0, len(ids):].tolist()
        text, hit = cut_at_stop(self.tokenizer.decode(new, skip_special_tokens=True), sampling.stop)
        stopped = hit or (bool(new) and new[-1] in self.stop_ids)
        return Completion(text=opened + text, num_tokens=len(new),
                          finish_reason=FINISH_STOP if stopped or len(new) < max_new else FINISH_LENGTH,
                          error="", prompt_tokens=len(ids))
