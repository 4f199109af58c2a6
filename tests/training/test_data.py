"""Encoding, masking, batch plans and preflight on the tiny student's char tokenizer (no Ray)."""

from __future__ import annotations

import pytest
import torch

from ray_distill.synthetic.student import build_tokenizer
from ray_distill.synthetic.tasks import base_corpus
from ray_distill.training.data import (
    IGNORE,
    collate,
    encode_example,
    has_generation_markers,
    layout,
    micro_batches,
    non_pad_fraction,
    pack_rows,
    plan_batches,
    preflight,
    rank_share,
    supervised_count,
)

CONV = [{"role": "user", "content": "3+4"}, {"role": "assistant", "content": "<think>3+4=7</think>\\boxed{7}"}]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def supervised_text(tok, ex) -> str:
    return tok.decode([t for t in ex["labels"] if t != IGNORE])


def test_labels_mask_exactly_the_prompt(tok):
    assert has_generation_markers(tok)
    ex = encode_example(tok, CONV, max_seq_len=256)
    prompt = tok.apply_chat_template(CONV[:1], tokenize=True, return_dict=True)["input_ids"]
    assert tok.decode(prompt) == "3+4="
    assert ex["labels"][: len(prompt)] == [IGNORE] * len(prompt)
    assert ex["labels"][len(prompt) :] == ex["input_ids"][len(prompt) :]  # no -100 after the prompt
    assert supervised_text(tok, ex) == "<think>3+4=7</think>\\boxed{7}<eos>"
    assert ex["input_ids"][-1] == tok.eos_token_id and not ex["truncated"]


def test_truncation_flag(tok):
    full = encode_example(tok, CONV, max_seq_len=256)
    cut = encode_example(tok, CONV, max_seq_len=8)
    assert cut["truncated"] and len(cut["input_ids"]) == len(cut["labels"]) == 8
    assert cut["input_ids"] == full["input_ids"][:8]
    assert not encode_example(tok, CONV, max_seq_len=len(full["input_ids"]))["truncated"]


def test_prefix_fallback_without_generation_markers():
    tok = build_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}={% else %}"
        "{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    )
    assert not has_generation_markers(tok)
    ex = encode_example(tok, CONV, max_seq_len=256)
    assert ex["labels"][:4] == [IGNORE] * 4
    assert supervised_text(tok, ex) == "<think>3+4=7</think>\\boxed{7}<eos>"
    assert ex == encode_example(build_tokenizer(), CONV, max_seq_len=256)  # same as the marker path


def test_preflight_reports_and_raises(tok):
    rows = base_corpus(20)
    check = preflight(tok, rows, max_seq_len=256)
    assert 0.5 < check["supervised_fraction"] < 1.0 and check["truncation_rate"] == 0.0
    assert check["example"].endswith("<eos>") and check["example_supervised"].startswith("<think>")
    with pytest.raises(ValueError, match="no supervised token"):
        preflight(tok, [{"messages": CONV[:1]}], max_seq_len=256)
    with pytest.raises(ValueError, match="no supervised token"):
        preflight(tok, [{"messages": CONV}], max_seq_len=3)  # cut before the answer


def test_plan_covers_every_example_once_and_buckets_by_length():
    lengths = [5 + (i * 7) % 40 for i in range(203)]
    plan = plan_batches(lengths, batch_size=16, min_size=2, seed=1, window=4)
    flat = sorted(i for b in plan for i in b)
    assert flat == list(range(203))
    assert all(len(b) >= 2 for b in plan)
    micro = [mb for b in plan for r in range(2) for mb in micro_batches(b, r, 2, accum_steps=1)]
    assert sorted(i for mb in micro for i in mb) == list(range(203))
    padded = [layout(lengths, mb, packing=False, capacity=64) for mb in micro]
    random_plan = [[[j] for j in range(i, min(i + 8, 203))] for i in range(0, 203, 8)]
    assert non_pad_fraction(lengths, padded) > non_pad_fraction(lengths, random_plan) + 0.2
    assert plan != plan_batches(lengths, batch_size=16, min_size=2, seed=2, window=4)
    with pytest.raises(ValueError, match="cannot feed 2 micro-batches"):
        plan_batches([3], batch_size=4, min_size=2, seed=0)


def test_plan_without_bucketing_and_micro_batches_for_accumulation():
    lengths = [5 + (i * 7) % 40 for i in range(101)]
    plan = plan_batches(lengths, batch_size=16, min_size=4, seed=1, bucket=False)
    assert sorted(i for b in plan for i in b) == list(range(101)) and all(len(b) >= 4 for b in plan)
    batch = plan[0]
    parts = [micro_batches(batch, r, 2, accum_steps=2) for r in range(2)]
    assert all(len(p) == 2 and all(p) for p in parts)  # every rank, every micro-step has examples
    assert sorted(i for p in parts for mb in p for i in mb) == sorted(batch)


def test_pack_rows_fills_rows_without_overflow():
    lengths = [5 + (i * 7) % 40 for i in range(64)]
    rows = pack_rows(lengths, list(range(64)), capacity=128)
    assert sorted(i for r in rows for i in r) == list(range(64))
    loads = [sum(lengths[i] for i in r) for r in rows]
    assert max(loads) <= 128 and len(rows) == -(-sum(lengths) // 128)  # the fewest rows possible here
    assert non_pad_fraction(lengths, [rows]) > 0.97
    assert pack_rows(lengths, [3], capacity=128) == [[3]]
    with pytest.raises(ValueError, match="longer than the packing capacity"):
        pack_rows([200], [0], capacity=128)


def test_collate_pads_right_and_ignores_padding():
    a = {"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}
    b = {"input_ids": [8], "labels": [8]}
    out = collate([[a], [b]], pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, IGNORE, IGNORE]]
    assert out["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]]  # the padding restarts its own positions
    assert out["input_ids"].dtype == torch.long


def test_collate_packs_examples_with_restarting_positions():
    a = {"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}
    b = {"input_ids": [8, 9], "labels": [8, 9]}
    out = collate([[a, b], [b]], pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7, 8, 9], [8, 9, 0, 0, 0]]
    # b's first label would be predicted from a's last token: masked, as in an unpacked row
    assert out["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9], [IGNORE, 9, IGNORE, IGNORE, IGNORE]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]


def test_rows_cut_at_max_seq_len_are_counted_and_warned_about(ray_local, tiny_student_path, caplog):
    from ray_distill.training.sft import tokenize_rows

    rows = base_corpus(8, seed=1)
    figures = tokenize_rows(rows, tiny_student_path, max_seq_len=512).figures
    assert figures["truncated_rows"] == 0 and "longer than train.max_seq_len" not in caplog.text
    figures = tokenize_rows(rows, tiny_student_path, max_seq_len=6).figures
    assert figures["truncated_rows"] == 8
    assert "8 of 8 training rows are longer than train.max_seq_len=6 and were cut at the end" in caplog.text


def test_the_corpus_is_tokenized_in_ray_data_as_the_driver_would(ray_local, tiny_student_path, monkeypatch):
    """tokenize_rows: Ray Data tasks (several blocks) give every row's ids and labels exactly as encode_example
    does; the driver gets lengths, supervised counts and digests in row order, the ids stay in the dataset."""
    from ray_distill.models import load_tokenizer
    from ray_distill.training import sft

    monkeypatch.setattr(sft, "ROWS_PER_BLOCK", 7)
    rows = base_corpus(30, seed=4)
    corpus = sft.tokenize_rows(rows, tiny_student_path, max_seq_len=64)
    tokenizer = load_tokenizer(tiny_student_path)
    expected = [encode_example(tokenizer, r["messages"], 64) for r in rows]
    assert corpus.dataset.num_blocks() == 5 and corpus.dataset.count() == 30
    assert corpus.lengths == [len(e["input_ids"]) for e in expected]
    assert corpus.supervised == [supervised_count(e) for e in expected]
    assert corpus.digests == [sft.example_digest(e) for e in expected]
    got = {int(r["index"]): r for r in corpus.dataset.iter_rows()}
    assert sorted(got) == list(range(30))
    for i, e in enumerate(expected):
        assert list(got[i]["input_ids"]) == e["input_ids"] and list(got[i]["labels"]) == e["labels"]


def test_a_workers_share_of_an_epoch_is_its_slice_of_every_batch():
    batches = [[5, 1, 7, 3], [0, 2, 4], [6]]
    assert rank_share(batches, 0, 2) == {5, 7, 0, 4, 6}
    assert rank_share(batches, 1, 2) == {1, 3, 2}
    assert rank_share(batches, 0, 1) == set(range(8))
    for batch in batches:  # the share holds every micro-batch this rank trains on
        for micro in micro_batches(batch, 1, 2, accum_steps=2):
            assert set(micro) <= rank_share(batches, 1, 2)
