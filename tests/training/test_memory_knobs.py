"""The trainer's memory knobs (param_dtype, reduce_every_micro_step, cpu_offload, shard_size, custom_resources,
attn_implementation auto): their config rules and pure pieces (no Ray), and real FSDP2 on two gloo ranks
(two processes of this machine, the loop's own code: ``build_student`` + ``EpochRunner``; no Ray).

The Ray Train launch with these knobs (HSDP, bf16 parameters, resume) is in test_strategies.py.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
from pydantic import ValidationError

from ray_distill.config import TrainConfig


def test_config_rules_of_the_memory_knobs():
    cfg = TrainConfig()
    assert (cfg.param_dtype, cfg.reduce_every_micro_step, cfg.cpu_offload, cfg.shard_size, cfg.custom_resources,
            cfg.attn_implementation) == ("fp32", True, False, None, {}, "auto")
    ok = TrainConfig(num_workers=16, batch_size=32, strategy="fsdp", precision="bf16", param_dtype="bf16",
                     cpu_offload=True, shard_size=8, custom_resources={"training": 1})
    assert ok.shard_size == 8 and ok.custom_resources == {"training": 1.0}
    refused = {
        "param_dtype bf16 needs precision bf16": {"param_dtype": "bf16"},
        "cpu_offload needs strategy fsdp": {"cpu_offload": True},
        "shard_size needs strategy fsdp": {"shard_size": 1},
        "num_workers 2 is not a multiple of shard_size 4": {"strategy": "fsdp", "shard_size": 4},
        r"custom_resources \['CPU'\]: set cpus_per_worker / use_gpu instead": {"custom_resources": {"CPU": 2}},
        "each amount must be > 0": {"custom_resources": {"training": 0}},
    }
    for message, fields in refused.items():
        with pytest.raises(ValidationError, match=message):
            TrainConfig(**fields)
    with pytest.raises(ValidationError, match="param_dtype"):
        TrainConfig(param_dtype="fp16", precision="bf16")


def test_attention_auto_resolves_per_device():
    from ray_distill.training.shard import flash_attn_imports, resolve_attn_implementation

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert resolve_attn_implementation("auto", cuda, flash=True) == "flash_attention_2"
    assert resolve_attn_implementation("auto", cuda, flash=False) == "sdpa"
    assert resolve_attn_implementation("auto", cpu, flash=True) == "sdpa"
    assert resolve_attn_implementation("eager", cuda, flash=True) == "eager"  # an explicit choice is kept
    assert resolve_attn_implementation("flash_attention_2", cpu) == "flash_attention_2"
    assert isinstance(flash_attn_imports(), bool)  # False on this CPU image (no flash_attn), never an error
    assert resolve_attn_implementation("auto", cpu) == "sdpa"


def test_packed_rows_go_as_one_row_only_for_the_resolved_flash_kernel():
    from ray_distill.tracking import NullTracker
    from ray_distill.training.loop import EpochRunner

    def runner(attn: str, packing: bool = True) -> EpochRunner:
        cfg = TrainConfig(num_workers=1, batch_size=2, packing=packing, attn_implementation=attn)
        return EpochRunner(torch.nn.Linear(1, 1), None, None, cfg, [], [], 0, 1, 0, NullTracker())

    assert not runner("auto").one_row  # auto on the CPU: sdpa, padded rows
    assert runner("flash_attention_2").one_row and not runner("flash_attention_2", packing=False).one_row


def test_backend_and_worker_resources():
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig

    from ray_distill.training.sft import process_group_backend, worker_resources

    gpu = TrainConfig(use_gpu=True, cpus_per_worker=8, custom_resources={"training": 1})
    assert process_group_backend(gpu) == "nccl" and process_group_backend(TrainConfig()) == "gloo"
    offload = TrainConfig(use_gpu=True, strategy="fsdp", cpu_offload=True)
    assert process_group_backend(offload) == "cpu:gloo,cuda:nccl"  # host shards reduced through gloo
    assert TorchConfig(backend=process_group_backend(gpu)).backend == "nccl"
    assert worker_resources(gpu) == {"CPU": 8.0, "training": 1.0}
    scaling = ScalingConfig(num_workers=2, use_gpu=True, resources_per_worker=worker_resources(gpu))
    assert scaling._resources_per_worker_not_none == {"CPU": 8.0, "GPU": 1, "training": 1.0}


def test_fsdp_gradients_stay_sharded_when_reduced_every_micro_step():
    """After an accumulation micro-step FSDP2 holds the reduce-scattered (sharded) gradient when it reduces every
    micro-step, and none yet (an unsharded accumulator instead) when it syncs on the last one; DDP never syncs
    there. One gloo rank in this process."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from ray_distill.training.loop import gradient_sync

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        for every in (True, False):
            model = fully_shard(torch.nn.Linear(4, 4))
            with gradient_sync(model, sync=False, reduce_every_micro_step=every):
                model(torch.ones(2, 4)).sum().backward()
            assert (model.weight.grad is not None) == every
            assert model._get_fsdp_state()._fsdp_param_group.reduce_grads  # switched back on for the last step
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- real FSDP2 on two gloo ranks
FSDP = {"num_workers": 2, "batch_size": 8, "grad_accum_steps": 2, "max_seq_len": 64, "strategy": "fsdp",
        "lr": 3e-3, "warmup_ratio": 0.0}
VARIANTS = {  # name: overrides of FSDP; every variant trains the same steps on the same rows
    "sync_last": {"reduce_every_micro_step": False},  # the gradients reduce-scattered on the last micro-step only
    "every": {"reduce_every_micro_step": True},
    "hsdp": {"shard_size": 1},  # a (2 replicate, 1 shard) mesh: shards of one rank, replicas all-reduced
    "offload": {"cpu_offload": True},
    "bf16": {"precision": "bf16", "param_dtype": "bf16"},
}


def _rank(rank: int, port: int, student: str, out: str) -> None:
    """One rank: each variant builds the student, trains 8 steps (2 epochs of 4) and rank 0 saves the global
    losses and the full weights."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from ray_distill.synthetic.tasks import base_corpus
    from ray_distill.tracking import NullTracker
    from ray_distill.training.loop import EpochRunner, build_optimizer, epoch_plan, global_sum
    from ray_distill.training.shard import build_student
    from ray_distill.models import load_tokenizer
    from ray_distill.training.data import encode_example, supervised_count

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    cpu = torch.device("cpu")
    tokenizer = load_tokenizer(student)
    examples = [encode_example(tokenizer, r["messages"], FSDP["max_seq_len"]) for r in base_corpus(32, seed=3)]
    lengths, supervised = [len(e["input_ids"]) for e in examples], [supervised_count(e) for e in examples]
    for name, overrides in VARIANTS.items():
        cfg = TrainConfig(**FSDP, **overrides)
        torch.manual_seed(cfg.seed)
        model, _ = build_student(student, cfg, rank, 2, cpu)
        optimizer, scheduler = build_optimizer(model, cfg, total_steps=8)
        runner = EpochRunner(model, optimizer, scheduler, cfg, lengths, supervised, rank, 2, 0, NullTracker(), cpu,
                             examples=dict(enumerate(examples)))
        losses = []
        for epoch in range(2):
            for batch in epoch_plan(lengths, cfg, 2, epoch):
                loss_sum, sup, _ = runner.step(batch)
                losses.append(global_sum([loss_sum], cpu)[0] / sup)
        weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            dtypes = {str(p.dtype) for p in model.parameters()}
            torch.save({"losses": losses, "weights": weights, "dtypes": dtypes}, os.path.join(out, f"{name}.pt"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tiny_student_path, tmp_path_factory):
    import torch.multiprocessing as mp

    out = str(tmp_path_factory.mktemp("fsdp-knobs"))
    mp.start_processes(_rank, args=(_free_port(), tiny_student_path, out), nprocs=2, start_method="spawn")
    return {name: torch.load(os.path.join(out, f"{name}.pt")) for name in VARIANTS}


def _relative(a: dict, b: dict) -> float:
    return max(((a[k].float() - b[k].float()).norm() / b[k].float().norm()).item() for k in b)


@pytest.mark.slow
def test_reduce_scatter_every_micro_step_trains_as_the_last_step_sync(two_ranks):
    """Sharded gradients reduced after every accumulation micro-step give the same run (losses and weights)
    as one reduction on the last micro-step; so do HSDP and CPU offload."""
    ref = two_ranks["sync_last"]
    assert ref["losses"][-1] < 0.8 * ref["losses"][0]
    for name in ("every", "hsdp", "offload"):
        run = two_ranks[name]
        assert run["losses"] == pytest.approx(ref["losses"], rel=1e-5), name
        assert _relative(run["weights"], ref["weights"]) < 1e-3, name  # measured 3e-5 to 5e-5 (summation order)


@pytest.mark.slow
def test_bf16_parameters_train(two_ranks):
    """bf16 shards and gradients with the fp32-moment AdamW: the loss falls about as with fp32 master weights."""
    run, ref = two_ranks["bf16"], two_ranks["sync_last"]
    assert run["dtypes"] == {"torch.bfloat16"}
    assert {v.dtype for v in run["weights"].values() if v.is_floating_point()} == {torch.bfloat16}
    assert run["losses"][-1] < 0.8 * run["losses"][0]
    assert run["losses"][-1] == pytest.approx(ref["losses"][-1], rel=0.05)
