"""Base-knowledge replay (``training.replay``): how many rows, which rows, and the config's one-line refusal."""

from __future__ import annotations

import json
import logging

import pytest

from ray_distill import columns as C
from ray_distill.config import ConfigError, load_config
from ray_distill.synthetic.tasks import base_corpus
from ray_distill.training.replay import replay_count, training_rows

JOB = """
storage: {storage}
questions: {{synthetic: {{family: arith, num_questions: 10}}}}
teachers: [{{name: t, engine: {{kind: scripted, persona: concise}}}}]
"""


def _cfg(tmp_path, *overrides: str):
    p = tmp_path / "job.yaml"
    p.write_text(JOB.format(storage=tmp_path / "out"))
    return load_config(p, list(overrides))


def _corpus(n: int) -> list[dict]:
    return [{C.MESSAGES: [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
             C.QUESTION_ID: str(i)} for i in range(n)]


def test_replay_is_that_share_of_the_training_rows():
    assert replay_count(1000, 0.0) == 0
    assert replay_count(900, 0.1) == 100  # 100 of 1,000 training rows
    assert replay_count(2167, 0.1) == 241
    assert replay_count(3, 0.5) == 3
    with pytest.raises(ValueError, match="replay fraction"):
        replay_count(10, 1.0)


def test_a_synthetic_student_replays_the_first_rows_it_was_pretrained_on(tmp_path):
    cfg = _cfg(tmp_path, "replay.fraction=0.2", "seed=3")
    corpus = _corpus(40)
    rows, figures = training_rows(cfg, corpus)
    assert figures == {"replay_rows": 10, "replay_source": "base_facts"}
    assert rows[:40] == corpus  # the curated corpus is kept whole, in order
    pretraining = base_corpus(cfg.student.base_rows, seed=3)
    assert rows[40:] == pretraining[:10]


def test_no_replay_by_default(tmp_path):
    corpus = _corpus(5)
    assert training_rows(_cfg(tmp_path), corpus) == (corpus, {"replay_rows": 0})


def test_a_source_file_is_replayed_in_a_seeded_shuffle_and_cycled_with_a_warning(tmp_path, caplog):
    src = tmp_path / "general.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in _corpus(6)) + "\n")
    cfg = _cfg(tmp_path, "replay.fraction=0.5", f"replay.source={src}", "replay.seed=1")
    rows, figures = training_rows(cfg, _corpus(4))
    replayed = [r[C.MESSAGES][0]["content"] for r in rows[4:]]
    assert figures["replay_source"] == str(src) and len(replayed) == 4
    assert len(set(replayed)) == 4 and set(replayed) <= {f"q{i}" for i in range(6)}
    assert training_rows(cfg, _corpus(4))[0] == rows  # the same seed: the same rows
    other = load_config(tmp_path / "job.yaml", ["replay.fraction=0.5", f"replay.source={src}", "replay.seed=2"])
    assert [r[C.MESSAGES][0]["content"] for r in training_rows(other, _corpus(4))[0][4:]] != replayed
    with caplog.at_level(logging.WARNING, logger="ray_distill.training.replay"):
        rows, _ = training_rows(cfg, _corpus(10))  # 10 replayed rows from a 6-row source
    assert len(rows) == 20 and "some appear more than once" in caplog.text


def test_a_pretrained_student_needs_a_source(tmp_path):
    with pytest.raises(ConfigError, match="replay.source"):
        _cfg(tmp_path, "replay.fraction=0.1", "student.model=HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(ConfigError, match="replay.source"):
        _cfg(tmp_path, "replay.fraction=0.1", "student.preset=smollm2-135m")
    cfg = _cfg(tmp_path, "replay.fraction=0.1", "student.preset=smollm2-135m", "replay.source=memory://general.jsonl")
    assert cfg.replay.source == "memory://general.jsonl"
    with pytest.raises(ConfigError, match="fraction"):
        _cfg(tmp_path, "replay.fraction=1.0")
