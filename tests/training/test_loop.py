"""Pure pieces of the worker loop: LR schedule, fsspec copy helpers (no Ray)."""

from __future__ import annotations

import os

import fsspec
import pytest

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
