"""Shard a real architecture with FSDP2 over a fake process group and count what one rank holds (run as a
subprocess by test_fake_fsdp.py, so the process group never leaks into other tests).

    python tests/planning/fake_fsdp.py MODEL WORLD PARAM_DTYPE   # prints {"params": bytes, "grads": ..., "optimizer": ...}

The model is built on the meta device from its config (no weights), wrapped in the trainer's LossModel and
sharded as ``training/shard.py`` does (each decoder layer, then the root, on its device mesh, with its
mixed-precision policy); gradients are the shards' own (what a reduce-scatter leaves), and the optimizer is
the trainer's (``loop.build_optimizer``), stepped once on the meta shards so it creates its real state.
"""

from __future__ import annotations

import json
import sys


def main(model_ref: str, world: int, param_dtype: str) -> dict:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from ray_distill.config import TrainConfig
    from ray_distill.planning.shapes import config_dict, meta_model
    from ray_distill.training.loop import build_optimizer
    from ray_distill.training.shard import LossModel, device_mesh
    from ray_distill.training.shard import param_dtype as dtype_of

    cfg = TrainConfig(num_workers=world, batch_size=world, strategy="fsdp", precision="bf16", param_dtype=param_dtype)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        base = meta_model(config_dict(model_ref)).to(dtype_of(cfg))
        model = LossModel(base, cfg.loss_chunk_tokens)
        mesh = device_mesh(torch.device("cpu"), world, cfg.shard_size)
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for module in base.modules():
            if type(module).__name__ in (base._no_split_modules or []):
                fully_shard(module, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        params = list(model.parameters())
        local = [p.to_local() for p in params]
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer, _ = build_optimizer(model, cfg, total_steps=10)
        if hasattr(optimizer, "_generator"):  # bf16 stochastic rounding: meta tensors take no device generator
            optimizer._generator = lambda device, step, index: None
        optimizer.step()
        state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        return {
            "params": sum(t.numel() * t.element_size() for t in local),
            "grads": sum(p.grad.to_local().numel() * p.grad.element_size() for p in params),
            "optimizer": sum((t.to_local() if hasattr(t, "to_local") else t).numel() * t.element_size() for t in state
                             if t.dim() > 0),
            "param_dtype": str(local[0].dtype),
        }
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), sys.argv[3])))
