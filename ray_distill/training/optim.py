"""AdamW for bf16 parameters: fp32 moments, the update computed in fp32, written back with stochastic rounding.

    optimizer = AdamW(groups, lr=1e-5, betas=(0.9, 0.98), seed=cfg.seed)   # params and grads in bf16

With ``param_dtype: bf16`` the trained parameters and their gradients are bf16 (2 + 2 bytes per parameter)
and the two Adam moments stay fp32 (8 bytes): 12 bytes per parameter instead of fp32 master weights' 16.
A bf16 weight near 1.0 moves in steps of 2^-8 to 2^-7, so an update of lr 1e-5 rounded to the nearest
bf16 value is lost; rounding up or down at random, with the probability of each proportional to how close
the fp32 result is (:func:`round_stochastic`), keeps every update in expectation.

The rounding noise is a function of ``(seed, step, parameter index)``: replicas of the same parameter (DDP,
HSDP's replicate groups) round alike and stay identical, and a resumed run rounds as the uninterrupted one.
FSDP2 parameters are DTensors: the update runs on their local shards (on the host with CPU offload), and the
moments are DTensors of the same placement, so sharded checkpoints hold them like torch's AdamW state.
For fp32 parameters the update is the same as ``torch.optim.AdamW``'s, without rounding.

torchao ships AdamW variants with bf16 stochastic rounding (``torchao.optim._AdamW``), but it keeps the
moments in the parameters' dtype (bf16 moments: 8 bytes per parameter, not the fp32 moments asked here) and
compiles its step with ``torch.compile`` (a first step of ~17 s on a CPU, and a C++ toolchain at run time).
"""

from __future__ import annotations

import math
from itertools import chain

import torch
from torch.distributed.tensor import DTensor

_MIX = 1_000_003  # odd multiplier that spreads (seed, step, index) over the generator's seed space


def round_stochastic(x: torch.Tensor, dtype: torch.dtype, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` (fp32) in ``dtype``; to bf16 it rounds up (away from zero) with probability equal to the
    fraction of the bf16 step that ``x`` lies beyond the value below it, so the result is unbiased."""
    if dtype != torch.bfloat16:
        return x.to(dtype)
    bits = x.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)  # low 16 bits cleared: exact


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


class AdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) with fp32 moments whatever the parameters' dtype; see the module
    docstring. Hyper-parameters as ``torch.optim.AdamW``'s; ``seed`` seeds the rounding noise."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, seed: int = 0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device, step: int, index: int) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device)
        gen = self._generators[device]
        gen.manual_seed(((self.seed * _MIX + step) * _MIX + index) % (1 << 63))
        return gen

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, but the moments stay fp32 (torch casts floating state to each parameter's dtype)."""
        super().load_state_dict(state_dict)
        params = dict(zip(chain.from_iterable(g["params"] for g in state_dict["param_groups"]),
                          chain.from_iterable(g["params"] for g in self.param_groups)))
        for pid, saved in state_dict["state"].items():
            p = params[pid]
            for key in ("exp_avg", "exp_avg_sq"):
                if key in saved:
                    self.state[p][key] = saved[key].to(device=p.device, dtype=torch.float32)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = -1
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)  # on the host, as torch's AdamW keeps it
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32,
                                                           memory_format=torch.preserve_format)
                state["step"] += 1
                step = int(state["step"].item())
                param, exp_avg, exp_avg_sq = _local(p), _local(state["exp_avg"]), _local(state["exp_avg_sq"])
                grad = _local(p.grad).float()
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
                master = param if param.dtype == torch.float32 else param.float()
                if wd:
                    master.mul_(1 - lr * wd)
                master.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
                if master is not param:
                    param.copy_(round_stochastic(master, param.dtype, self._generator(param.device, step, index)))
        return loss
