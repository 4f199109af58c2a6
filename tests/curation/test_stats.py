"""Length statistics and entropy under a tiny saved student."""

from __future__ import annotations

import math

from ray_distill.curation.stats import length_stats, token_entropy_under_model
from ray_distill.synthetic.student import build_tokenizer


def test_length_stats():
    tok = build_tokenizer()
    stats = length_stats(["<think>ab</think>", "abcd"], tokenize=lambda t: tok(t)["input_ids"])
    assert stats["count"] == 2 and stats["min"] == 4 and stats["max"] == 4 and stats["mean"] == 4
    assert math.isnan(length_stats([], tokenize=len)["mean"])


def test_entropy_under_random_student(tiny_student_path):
    texts = ["<think>1+2=3</think>\\boxed{3}", "<think>max(1,9)=9</think>\\boxed{9}", "x" * 600]
    prompts = ["1+2", "max(1,9)", "long"]
    bits = token_entropy_under_model(tiny_student_path, texts, prompts, max_rows=256)
    vocab = len(build_tokenizer())
    assert math.isfinite(bits) and 0.0 < bits <= math.log2(vocab) + 1e-6
    # a subset and the full set agree on a uniform-ish random model to within a bit
    assert abs(token_entropy_under_model(tiny_student_path, texts[:1], prompts[:1], max_rows=1) - bits) < 1.0


def test_entropies_of_several_corpora_under_one_load_match_one_at_a_time(tiny_student_path):
    from ray_distill.curation.stats import token_entropies_under_model

    corpora = {"a": (["<think>1+2=3</think>\\boxed{3}"], ["1+2"]),
               "b": (["<think>max(1,9)=9</think>\\boxed{9}", "<think>4</think>\\boxed{4}"], ["max(1,9)", "2+2"])}
    both = token_entropies_under_model(tiny_student_path, corpora)
    assert both == {name: token_entropy_under_model(tiny_student_path, *tp) for name, tp in corpora.items()}
    assert both["a"] != both["b"]


def test_entropy_load_plan_float32_on_cpu_16_bit_sharded_on_gpus():
    import torch

    from ray_distill.curation.stats import entropy_load_plan

    assert entropy_load_plan(0, "float32") == {"dtype": torch.float32, "device_map": None}
    assert entropy_load_plan(0, "bfloat16") == {"dtype": torch.float32, "device_map": None}  # CPU: as before
    assert entropy_load_plan(8, "bfloat16") == {"dtype": torch.bfloat16, "device_map": "auto"}
    assert entropy_load_plan(1, "torch.float16") == {"dtype": torch.float16, "device_map": "auto"}
    assert entropy_load_plan(2, "float32")["dtype"] is torch.bfloat16  # never a full fp32 copy on a GPU
    assert entropy_load_plan(1, None)["dtype"] is torch.bfloat16


def test_entropies_of_the_tiny_student_are_the_pinned_cpu_numbers(tiny_student_path):
    """The float32 CPU path computes exactly what it computed before the GPU placement was added."""
    import pytest

    from ray_distill.curation.stats import token_entropies_under_model

    corpora = {"a": (["<think>1+2=3</think>\\boxed{3}"], ["1+2"]),
               "b": (["<think>max(1,9)=9</think>\\boxed{9}", "<think>4</think>\\boxed{4}"], ["max(1,9)", "2+2"])}
    got = token_entropies_under_model(tiny_student_path, corpora)
    assert got == pytest.approx({"a": 6.6050636985085225, "b": 6.607663361922555}, rel=1e-12)
