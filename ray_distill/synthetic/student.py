"""Tiny student presets: a Hugging Face Qwen2 causal LM built from a config, with a character-level
tokenizer built locally (no hub), saved with ``save_pretrained`` so that transformers and vLLM (CPU
build) both load it.

    path = save_random_student("tiny", "/tmp/student")   # weights + config + tokenizer + chat template
"""

from __future__ import annotations

import string

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
MARKERS = ["<think>", "</think>", "\\boxed{"]
CHARS = string.digits + string.ascii_lowercase + string.ascii_uppercase + " +-*/=;,.:()?!{}[]<>\\_'\"|^%#&@$~\n"

# User turn, then the assistant turn closed by EOS. The user turn ends with '=' so the prompt for
# generation is the rendered user turn (no extra generation marker needed).
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ m['content'] }}="
    "{% elif m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% endif %}{% endfor %}"
)

# head_dim 64 everywhere: vLLM's CPU attention refuses head sizes such as 16.
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=2,
                 intermediate_size=512),
    "micro": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                  intermediate_size=256),
}


def build_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Character-level tokenizer; the reasoning markers are single (non-special) tokens so that
    decoding with ``skip_special_tokens=True`` (vLLM's default) keeps them."""
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK, *MARKERS, *CHARS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True) for t in (PAD, EOS, UNK)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKERS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, model_max_length=model_max_length
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(preset: str, vocab_size: int, seed: int = 0, max_positions: int = 512) -> Qwen2ForCausalLM:
    if preset not in PRESETS:
        raise ValueError(f"unknown student preset {preset!r}; known: {sorted(PRESETS)}")
    cfg = Qwen2Config(
        vocab_size=vocab_size,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=1,
        pad_token_id=0,
        torch_dtype="float32",
        **PRESETS[preset],
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg)


def save_random_student(preset: str, path: str, seed: int = 0) -> str:
    """Build a randomly initialised student and its tokenizer and save both to a local ``path``."""
    tokenizer = build_tokenizer()
    model = build_model(preset, vocab_size=len(tokenizer), seed=seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
