"""The bf16-parameter AdamW (fp32 moments, stochastic rounding): its math against torch's AdamW, unbiased
rounding, tiny updates kept, replicas alike and resumes exact (no Ray)."""

from __future__ import annotations

import pytest
import torch

from ray_distill.training.optim import AdamW, round_stochastic


def test_fp32_parameters_update_as_torch_adamw():
    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(16, 8), torch.nn.Linear(16, 8)
    theirs.load_state_dict(ours.state_dict())
    opts = []
    for model, cls in ((ours, AdamW), (theirs, torch.optim.AdamW)):
        groups = [{"params": [model.weight], "weight_decay": 0.1}, {"params": [model.bias], "weight_decay": 0.0}]
        opts.append(cls(groups, lr=1e-2, betas=(0.9, 0.98)))
    for _ in range(5):
        x = torch.randn(4, 16)
        for model, opt in zip((ours, theirs), opts):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_stochastic_rounding_is_unbiased_between_the_two_neighbours():
    ulp = 2.0**-7  # bf16 spacing in [1, 2)
    x = torch.full((100_000,), 1.0 + 0.3 * ulp)
    y = round_stochastic(x, torch.bfloat16, torch.Generator().manual_seed(0))
    assert y.dtype == torch.bfloat16 and set(y.float().unique().tolist()) == {1.0, 1.0 + ulp}
    assert y.float().mean().item() == pytest.approx(x[0].item(), abs=0.01 * ulp)
    negative = round_stochastic(-x, torch.bfloat16, torch.Generator().manual_seed(0)).float()
    assert negative.mean().item() == pytest.approx(-x[0].item(), abs=0.01 * ulp)
    exact = torch.tensor([1.0, -2.5, 0.0, float("inf")])  # representable values stay as they are
    assert torch.equal(round_stochastic(exact, torch.bfloat16).float(), exact)


def test_updates_below_bf16_resolution_are_kept():
    """lr 1e-4 on weights of 1.0 (bf16 spacing 2^-8 below 1): torch's AdamW on bf16 weights rounds every
    update away; the fp32-moment AdamW with stochastic rounding moves them by lr per step on average."""
    moved = {}
    for cls in (AdamW, torch.optim.AdamW):
        p = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
        opt = cls([p], lr=1e-4, betas=(0.9, 0.98), weight_decay=0.0)
        for _ in range(100):
            p.grad = torch.ones_like(p)
            opt.step()
        moved[cls] = 1.0 - p.float().mean().item()
        if cls is AdamW:
            assert opt.state[p]["exp_avg"].dtype == torch.float32 and p.dtype == torch.bfloat16
    assert moved[torch.optim.AdamW] == 0.0
    assert moved[AdamW] == pytest.approx(100 * 1e-4, rel=0.05)


def test_replicas_round_alike_and_a_resume_continues_exactly():
    def run(steps: int, opt_state=None, start=None):
        p = torch.nn.Parameter(start.clone() if start is not None else torch.linspace(-1, 1, 257).bfloat16())
        opt = AdamW([p], lr=3e-3, weight_decay=0.01, seed=7)
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        for i in range(steps):
            p.grad = torch.sin(p.detach().float() * (i + 1)).bfloat16()
            opt.step()
        return p.detach(), opt.state_dict()

    a, _ = run(6)
    b, _ = run(6)
    assert torch.equal(a, b)  # the same seed, step and parameter: the same rounding on every replica
    half, state = run(3)
    assert state["state"][0]["exp_avg"].dtype == torch.float32
    resumed, resumed_state = run(3, state, half)
    assert resumed_state["state"][0]["exp_avg_sq"].dtype == torch.float32  # torch would cast them to bf16
    assert not torch.equal(half, a)
    # the gradients of the resumed steps are those of steps 1-3 again (sin(p * (i + 1))), so compare with a
    # straight run of those gradients: same moments, same step counter, same rounding noise
    straight_p = torch.nn.Parameter(torch.linspace(-1, 1, 257).bfloat16())
    straight = AdamW([straight_p], lr=3e-3, weight_decay=0.01, seed=7)
    for i in list(range(3)) + list(range(3)):
        straight_p.grad = torch.sin(straight_p.detach().float() * (i + 1)).bfloat16()
        straight.step()
    assert torch.equal(resumed, straight_p.detach())
