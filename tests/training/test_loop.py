"""Pure pieces of the worker loop: LR schedule, fsspec copy helpers (no Ray)."""

from __future__ import annotations

import os

import fsspec
import pytest
import torch

from ray_distill.data.fs import is_local, local_copy, put_dir
from ray_distill.training.loop import lr_factor


def test_lr_schedule_warmup_then_cosine_to_floor():
    total, warmup = 100, 5
    factors = [lr_factor(s, total, warmup, 0.1) for s in range(total + 1)]
    assert factors[0] == pytest.approx(0.2) and factors[4] == pytest.approx(1.0)
    assert factors[5] == pytest.approx(1.0) and factors[total] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[5:], factors[6:]))  # monotone decay after warmup
    assert lr_factor(0, 10, 0, 0.0) == pytest.approx(1.0)  # no warmup


def test_model_dir_roundtrip_through_a_remote_filesystem(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "tokenizer.json").write_text("[]")
    url = "memory://ray-distill-test/model"
    assert is_local(str(src)) and is_local(f"file://{src}") and not is_local(url)
    put_dir(str(src), url)
    remote = fsspec.filesystem("memory").ls(url, detail=False)
    assert sorted(os.path.basename(p) for p in remote) == ["config.json", "tokenizer.json"]
    with local_copy(url) as local:
        assert sorted(os.listdir(local)) == ["config.json", "tokenizer.json"]
    assert not os.path.exists(local)  # the temporary copy is cleaned up


# ---------------------------------------------------------------- numerics on the 'micro' student (no Ray)
@pytest.fixture(scope="module")
def micro():
    from ray_distill.synthetic.student import build_tokenizer
    from ray_distill.synthetic.tasks import make_questions
    from ray_distill.synthetic.teachers import write_solution
    from ray_distill.training.data import encode_example

    tok = build_tokenizer()
    qs = make_questions("arith", 24, 1, 4, seed=3)
    rows = [[{"role": "user", "content": q["question"]},
             {"role": "assistant", "content": write_solution("verbose", q["question"], 0)}] for q in qs]
    examples = [encode_example(tok, r, max_seq_len=128) for r in rows]
    return tok, [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples]


def fresh_model(tok):
    from ray_distill.synthetic.student import build_model

    from ray_distill.training.shard import LossModel

    return LossModel(build_model("micro", vocab_size=len(tok), seed=0), chunk_tokens=None)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_packed_loss_equals_unpacked_loss(micro):
    """Packing changes the layout only: attention stays inside each example (position_ids restart)."""
    from ray_distill.training.data import collate, layout
    from ray_distill.training.loop import token_loss_sum

    tok, examples = micro
    lengths = [len(e["input_ids"]) for e in examples]
    model = fresh_model(tok)
    items = list(range(len(examples)))
    packed_rows = layout(lengths, items, packing=True, capacity=128)
    assert len(packed_rows) < len(items) // 2  # several examples per row
    losses, grads = [], []
    for rows in (packed_rows, layout(lengths, items, packing=False, capacity=128)):
        model.zero_grad()
        loss = token_loss_sum(model, collate([[examples[i] for i in r] for r in rows], pad_id=0))
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert relative_error(grads[0], grads[1]) < 1e-5


@pytest.mark.parametrize("packing", [False, True])
def test_grad_accumulation_gives_the_same_update(micro, packing):
    """accum=2 on half-size micro-batches == accum=1 on the whole batch (fp32): the loss is normalised
    by the supervised tokens of the whole global batch, not per micro-batch."""
    from ray_distill.config import TrainConfig
    from ray_distill.tracking import NullTracker
    from ray_distill.training.loop import EpochRunner, build_optimizer
    from ray_distill.training.data import supervised_count

    tok, examples = micro
    grads, losses = [], []
    for accum in (1, 2):
        cfg = TrainConfig(num_workers=1, batch_size=16, grad_accum_steps=accum, packing=packing, lr=1e-2,
                          max_seq_len=128, warmup_ratio=0.0)
        model = fresh_model(tok)
        optimizer, scheduler = build_optimizer(model, cfg, total_steps=10)
        runner = EpochRunner(model, optimizer, scheduler, cfg, [len(e["input_ids"]) for e in examples],
                             [supervised_count(e) for e in examples], rank=0, world=1, pad_id=0,
                             tracker=NullTracker(), examples=dict(enumerate(examples)))
        loss_sum, sup, _ = runner.step(list(range(16)))
        assert sup > 0 and loss_sum > 0
        losses.append(loss_sum)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))  # the clipped gradient stepped on
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert relative_error(grads[1], grads[0]) < 1e-5


def test_chunked_loss_equals_full_logits_loss():
    """The chunked cross-entropy (only supervised positions, chunk by chunk, recomputed in backward) gives
    the loss and gradients of full fp32 logits."""
    import torch.nn.functional as F

    from ray_distill.training.data import IGNORE
    from ray_distill.training.loss import chunked_token_loss_sum

    torch.manual_seed(0)
    hidden = torch.randn(3, 40, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (3, 40))
    targets[:, :7] = IGNORE  # a prompt
    full = F.cross_entropy((hidden @ weight.T).reshape(-1, 50), targets.reshape(-1), ignore_index=IGNORE,
                           reduction="sum")
    reference = torch.autograd.grad(full, (hidden, weight))
    for chunk in (None, 10, 33):
        loss = chunked_token_loss_sum(hidden, weight, None, targets, chunk_tokens=chunk)
        assert loss.item() == pytest.approx(full.item(), rel=1e-5)
        for got, want in zip(torch.autograd.grad(loss, (hidden, weight)), reference):
            assert relative_error(got, want) < 1e-5
    nothing = chunked_token_loss_sum(hidden, weight, None, torch.full((3, 40), IGNORE), chunk_tokens=10)
    assert nothing.item() == 0.0 and nothing.requires_grad  # no supervised token: zero, still differentiable


def test_one_row_packing_gives_the_same_loss(micro):
    """The padding-free layout of varlen flash attention (every packed row in one row, batch 1) is the
    same loss: position_ids restarting at each example keep attention inside it (sdpa here)."""
    from ray_distill.training.data import collate, layout
    from ray_distill.training.loop import token_loss_sum

    tok, examples = micro
    lengths = [len(e["input_ids"]) for e in examples]
    rows = layout(lengths, list(range(len(examples))), packing=True, capacity=128)
    model = fresh_model(tok)
    per_example = [[examples[i] for i in r] for r in rows]
    flat = collate(per_example, pad_id=0, one_row=True)
    assert flat["input_ids"].shape == (1, sum(lengths))  # one row, no padding
    losses = [token_loss_sum(model, collate(per_example, pad_id=0, one_row=one)).item() for one in (False, True)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_sharded_checkpoint_roundtrip_through_an_fsspec_url(micro):
    """save_checkpoint/load_checkpoint (torch.distributed.checkpoint through fsspec) on a remote-style URL,
    one process: weights, optimizer state, LR schedule and loop state come back exactly."""
    from ray_distill.config import TrainConfig
    from ray_distill.training.checkpoint import LoopState, load_checkpoint, save_checkpoint, storage_url
    from ray_distill.training.data import collate
    from ray_distill.training.loop import build_optimizer, token_loss_sum

    assert storage_url("bucket/run/step_0000008", "s3://bucket") == "s3://bucket/run/step_0000008"
    assert storage_url("/data/run/epoch_0001", "/data") == "/data/run/epoch_0001"
    tok, examples = micro
    cfg = TrainConfig(num_workers=1, batch_size=4, lr=1e-2)
    inputs = collate([[e] for e in examples[:4]], pad_id=0)
    trained = fresh_model(tok)
    optimizer, scheduler = build_optimizer(trained, cfg, total_steps=10)
    token_loss_sum(trained, inputs).backward()
    optimizer.step()
    scheduler.step()
    url = "memory://ray-distill-test/ckpt/step_0000001"
    save_checkpoint(url, trained, optimizer, scheduler, LoopState(global_step=1, epoch_step=1), rank=0)
    assert {".metadata", "__0_0.distcp", "train_state.json"} <= {
        os.path.basename(p) for p in fsspec.filesystem("memory").ls(url, detail=False)}
    resumed = fresh_model(tok)
    optimizer2, scheduler2 = build_optimizer(resumed, cfg, total_steps=10)
    state = load_checkpoint(url, resumed, optimizer2, scheduler2)
    assert (state.global_step, state.restarts, state.resumed_from_step) == (1, 1, 1)
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()
    for a, b in zip(trained.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    losses = []
    for model, opt in ((trained, optimizer), (resumed, optimizer2)):  # the next step is the same step
        opt.zero_grad()
        token_loss_sum(model, inputs).backward()
        opt.step()
        losses.append(token_loss_sum(model, inputs).item())
    assert losses[0] == losses[1]


def test_multi_job_checkpoint_names_say_which_job_they_continue():
    from ray_distill.training.loop import checkpoint_job, checkpoint_name

    assert checkpoint_name(0, 1, "epoch_0003") == "epoch_0003"  # a one-job launch names them as always
    assert checkpoint_name(2, 3, "step_0000040") == "job02-step_0000040"
    assert checkpoint_job("/data/run/job02-step_0000040") == 2
    assert checkpoint_job("s3://b/run/job11-epoch_0001/") == 11
    assert checkpoint_job("/data/run/epoch_0003") == 0 and checkpoint_job(None) == 0


def test_job_spans_time_each_job_of_a_launch_and_keep_those_of_an_earlier_one():
    from ray_distill.training.sft import job_spans

    # a fresh launch at t=100: job 0 carries the worker group's start-up, job 2 ends with the launch
    assert job_spans([(126, 150), (150, 180), (180, 210)], 100, 212) == [(100, 150), (150, 180), (180, 212)]
    # a resume at t=500 of a launch that had finished jobs 0 and 1: they keep their own spans
    assert job_spans([(126, 150), (150, 180), (520, 530)], 500, 531) == [(126, 150), (150, 180), (500, 531)]


def test_release_before_export_frees_optimizer_state_and_gradients_but_keeps_weights():
    from ray_distill.training.loop import release_training_state

    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(2, 8)).sum().backward()
    optimizer.step()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    assert len(optimizer.state) == 2 and model.weight.grad is not None
    release_training_state(model, optimizer)
    assert len(optimizer.state) == 0 and model.weight.grad is None and model.bias.grad is None
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
