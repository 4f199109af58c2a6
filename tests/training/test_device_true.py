"""Device-true training, checked on CPU: every tensor the loop hands to a collective lives on the worker's
training device (``ray.train.torch.get_device()``).

On a GPU worker Ray Train starts NCCL, which has no CPU tensors: a tensor built without naming the device
(``torch.tensor(values)``) sits on the host and the first collective fails ("No backend type associated with
device type cpu"). gloo accepts it, so a CPU run cannot see that by itself. :func:`device_true` makes it
visible: under it, a torch factory call without ``device=`` (and everything computed from such tensors
alone, and ``.cpu()``) makes a *host* tensor, ``.to(device)`` makes a device one, and the collectives of
``torch.distributed`` refuse host tensors, as NCCL would. The loop's real code paths then run on the
'micro' student in a one-rank gloo process group in this process (no Ray): DDP and FSDP2 steps with
gradient accumulation, the step logging and epoch sums (``global_sum``), ``work_by_node``'s object gather
and a sharded checkpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

HOST = "_device_true_host"  # attribute set on tensors that would sit in host memory on a GPU worker
FACTORIES = {torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.empty, torch.full, torch.arange,
             torch.rand, torch.randn, torch.randint, torch.linspace, torch.eye}
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "reduce_scatter",
               "broadcast", "reduce", "gather", "scatter", "all_to_all_single", "all_to_all", "send", "recv",
               "isend", "irecv")


def is_host(t) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, HOST, False)


def _mark(t: torch.Tensor, host: bool) -> torch.Tensor:
    if host:
        setattr(t, HOST, True)
    elif is_host(t):
        delattr(t, HOST)
    return t


def _explicit_device(func, args, kwargs) -> bool:
    if kwargs.get("device") is not None:
        return True
    if func is torch.Tensor.to:  # t.to(device) / t.to("cuda") / t.to(other_tensor)
        return any(isinstance(a, (torch.device, str, int, torch.Tensor)) for a in args[1:])
    return False


class HostTensors(TorchFunctionMode):
    """Tags the tensors a GPU worker would hold in host memory (see the module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if func in (torch.Tensor.cpu, torch.from_numpy):
            host = True
        elif _explicit_device(func, args, kwargs):
            host = False
            if func is torch.Tensor.to and out is args[0]:  # on a GPU this moves: a new tensor
                out = out.clone()
        elif func in FACTORIES:
            host = True
        elif any(out is t for t in inputs):  # in place or a no-op: the tensor stays where it is
            return out
        else:  # computed from host tensors alone stays on the host; with a device tensor it runs there
            host = bool(inputs) and all(is_host(t) for t in inputs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                _mark(t, host)
        return out


def _checked(name: str, collective, device: torch.device):
    def call(*args, **kwargs):
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor) and (t.device != device or is_host(t)):
                raise RuntimeError(f"{name} got a tensor off the training device {device}: a host tensor "
                                   f"{tuple(t.shape)} {t.dtype} (NCCL: no backend type associated with device "
                                   "type cpu)")
        return collective(*args, **kwargs)

    return call


@contextlib.contextmanager
def device_true(device: torch.device) -> Iterator[None]:
    """Collectives refuse tensors that are not on ``device`` (host tensors included, see :class:`HostTensors`)."""
    c10d = dist.distributed_c10d
    saved = {(m, n): getattr(m, n) for m in (dist, c10d) for n in COLLECTIVES if hasattr(m, n)}
    try:
        for (module, name), fn in saved.items():
            setattr(module, name, _checked(name, saved[(c10d, name)] if (c10d, name) in saved else fn, device))
        with HostTensors():
            yield
    finally:
        for (module, name), fn in saved.items():
            setattr(module, name, fn)


@pytest.fixture
def process_group():
    """A one-rank gloo process group in this process (the worker's world, without Ray)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


CPU = torch.device("cpu")


def test_the_check_refuses_host_tensors_and_accepts_device_ones(process_group):
    with device_true(CPU):
        dist.all_reduce(torch.ones(3, device=CPU))
        dist.all_reduce(torch.tensor([1.0, 2.0]).to(CPU) * 2)  # moved, then computed on the device
        for host in (torch.tensor([1.0, 2.0]), torch.zeros(2).double(), torch.ones(2, device=CPU).cpu(),
                     torch.stack([torch.tensor(1.0), torch.tensor(2.0)])):
            with pytest.raises(RuntimeError, match="all_reduce got a tensor off the training device"):
                dist.all_reduce(host)
        with pytest.raises(RuntimeError, match="all_gather_into_tensor got a tensor off"):
            dist.all_gather_into_tensor(torch.empty(2, device=CPU), torch.arange(2.0))
        out = [None]
        dist.all_gather_object(out, ("node", 3))  # torch moves the pickled bytes to the device itself
        assert out == [("node", 3)]
    dist.all_reduce(torch.tensor([1.0]))  # the original collectives are back


@pytest.mark.parametrize("strategy,param_dtype", [("ddp", "fp32"), ("ddp", "bf16"), ("fsdp", "fp32")])
def test_the_loop_hands_only_device_tensors_to_collectives(process_group, tiny_student_path, strategy, param_dtype):
    """Steps with gradient accumulation and logging at every step, the epoch sums, the per-node work and a
    sharded checkpoint, under the check: the code paths that run on a GPU worker between its collectives."""
    from torch.nn.parallel import DistributedDataParallel

    from ray_distill.config import TrainConfig
    from ray_distill.synthetic.tasks import base_corpus
    from ray_distill.tracking import NullTracker
    from ray_distill.training.checkpoint import LoopState, save_checkpoint
    from ray_distill.training.loop import EpochRunner, build_optimizer, epoch_plan, global_sum, work_by_node
    from ray_distill.training.shard import build_student
    from ray_distill.models import load_tokenizer
    from ray_distill.training.data import encode_example, supervised_count

    cfg = TrainConfig(num_workers=1, batch_size=8, grad_accum_steps=2, max_seq_len=64, strategy=strategy,
                      precision="bf16" if strategy == "fsdp" or param_dtype == "bf16" else "fp32",
                      param_dtype=param_dtype, lr=3e-3)
    tokenizer = load_tokenizer(tiny_student_path)
    examples = [encode_example(tokenizer, r["messages"], cfg.max_seq_len) for r in base_corpus(16, seed=2)]
    model, _ = build_student(tiny_student_path, cfg, rank=0, world=1, device=CPU)
    if strategy == "ddp":
        model = DistributedDataParallel(model)
    optimizer, scheduler = build_optimizer(model, cfg, total_steps=2)
    runner = EpochRunner(model, optimizer, scheduler, cfg, [len(e["input_ids"]) for e in examples],
                         [supervised_count(e) for e in examples], rank=0, world=1, pad_id=0, tracker=NullTracker(),
                         device=CPU, log_every=1, examples=dict(enumerate(examples)))
    state = LoopState()
    with device_true(CPU):
        for _ in runner.steps(epoch_plan([len(e["input_ids"]) for e in examples], cfg, 1, 0), state):
            pass
        runner.sync(state)
        assert global_sum([1.5, 2], CPU) == [1.5, 2.0]
        work = work_by_node(runner.local_tokens, "node-a")
        save_checkpoint(f"memory://device-true/{strategy}-{param_dtype}", model, optimizer, scheduler, state, 0)
    assert state.global_step == 2 and state.epoch_real == runner.local_tokens > 0
    assert state.initial_loss > 0 and state.epoch_loss_sum > 0
    assert work == {"work_by_node": {"node-a": runner.local_tokens}, "num_nodes": 1}
