"""Corpus files read back with pandas/json and have the chat schema TRL/LLaMA-Factory expect."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ray_distill import columns as C
from ray_distill.data.corpus import to_chat_row, write_corpus, write_rejects


def _row(qid: str, idx: int, **extra) -> dict:
    return {
        C.QUESTION_ID: qid, C.QUESTION: f"q{qid}", C.ANSWER: "1", C.TEACHER: "t", C.SAMPLE_INDEX: idx,
        C.COMPLETION: f"<think>{qid}/{idx}</think>\\boxed{{1}}", C.FORMAT_OK: True, C.CORRECT: True,
        C.PREDICTED: "1", C.REASON: "", C.PASS_RATE: 0.25, C.SELECTION_DISTANCE: 3.0, **extra,
    }


def test_to_chat_row():
    chat = to_chat_row(_row("a", 0, **{C.SELECTION_DISTANCE: float("nan")}))
    assert chat[C.MESSAGES] == [
        {"role": "user", "content": "qa"},
        {"role": "assistant", "content": "<think>a/0</think>\\boxed{1}"},
    ]
    assert (chat[C.QUESTION_ID], chat[C.TEACHER], chat[C.SAMPLE_INDEX]) == ("a", "t", 0)
    assert chat[C.PASS_RATE] == 0.25 and chat[C.SELECTION_DISTANCE] is None
    with pytest.raises(KeyError, match="completion"):
        to_chat_row({k: v for k, v in _row("a", 0).items() if k != C.COMPLETION})


def test_write_corpus_reads_back(tmp_path):
    rows = pd.DataFrame([_row("b", 1), _row("a", 0), _row("b", 0)])
    paths = write_corpus(rows, str(tmp_path / "out"))
    df = pd.read_parquet(paths["parquet"])
    assert list(df.columns) == [C.MESSAGES, C.QUESTION_ID, C.TEACHER, C.SAMPLE_INDEX]
    assert list(zip(df[C.QUESTION_ID], df[C.SAMPLE_INDEX])) == [("a", 0), ("b", 0), ("b", 1)]
    assert [m["role"] for m in df[C.MESSAGES][0]] == ["user", "assistant"]
    lines = [json.loads(x) for x in open(paths["jsonl"], encoding="utf-8")]
    assert lines[0][C.MESSAGES][1]["content"] == "<think>a/0</think>\\boxed{1}"
    manifest = [json.loads(x) for x in open(paths["manifest"], encoding="utf-8")]
    assert manifest[2] == {
        C.QUESTION_ID: "b", C.TEACHER: "t", C.SAMPLE_INDEX: 1, C.FORMAT_OK: True, C.CORRECT: True,
        C.PREDICTED: "1", C.REASON: "", C.PASS_RATE: 0.25, C.SELECTION_DISTANCE: 3.0, C.NUM_TOKENS: None,
    }


def test_write_corpus_accepts_chat_rows(tmp_path):
    paths = write_corpus([to_chat_row(_row("a", 0, **{C.NUM_TOKENS: 12}))], str(tmp_path))
    manifest = json.loads(open(paths["manifest"]).read())
    assert manifest[C.CORRECT] is True and manifest[C.NUM_TOKENS] == 12
    assert pd.read_json(paths["jsonl"], lines=True)[C.MESSAGES][0][0]["role"] == "user"


def test_write_corpus_refuses_duplicates(tmp_path):
    with pytest.raises(ValueError, match="duplicate corpus row"):
        write_corpus([_row("a", 0), _row("a", 0)], str(tmp_path))


def test_write_rejects(tmp_path):
    path = write_rejects([{C.STAGE: "compression", C.REASON: "too_easy", C.QUESTION_ID: "a"}], str(tmp_path / "r.jsonl"))
    assert json.loads(open(path).read())[C.REASON] == "too_easy"
    with pytest.raises(ValueError, match="stage"):
        write_rejects([{C.REASON: "x"}], str(tmp_path / "r2.jsonl"))
    empty = write_rejects([], str(tmp_path / "none.jsonl"))
    assert open(empty).read() == ""


def test_read_corpus_round_trip_and_foreign_files(tmp_path):
    """``ray-distill train`` reads what ``curate`` writes, and any chat-messages file other tools write."""
    from ray_distill.data.corpus import read_corpus, write_corpus
    from ray_distill.data.questions import DataError

    rows = [{C.QUESTION_ID: f"q{i}", C.TEACHER: "t", C.SAMPLE_INDEX: 0, C.QUESTION: f"{i}+1",
             C.COMPLETION: f"<think>{i}+1={i + 1}</think>\\boxed{{{i + 1}}}"} for i in range(3)]
    write_corpus(rows, str(tmp_path / "corpus"))
    back = read_corpus(str(tmp_path / "corpus"))
    assert [r[C.MESSAGES][1]["content"] for r in back] == [r[C.COMPLETION] for r in rows]
    assert read_corpus(str(tmp_path / "corpus" / "corpus.jsonl")) == back
    foreign = tmp_path / "sft.jsonl"
    foreign.write_text('\ufeff{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, '
                       '{"role": "assistant", "content": "a"}]}\n')
    (only,) = read_corpus(str(foreign))
    assert [m["role"] for m in only[C.MESSAGES]] == ["system", "user", "assistant"] and only[C.QUESTION_ID] == "1"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "u"}]}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: row 1: the last turn"):
        read_corpus(str(bad))
    with pytest.raises(DataError, match="no corpus.parquet or corpus.jsonl"):
        read_corpus(str(tmp_path))


def test_corpus_hash_is_the_content_in_any_order():
    from ray_distill.data.corpus import corpus_hash

    rows = [_row("b", 1), _row("a", 0), _row("b", 0)]
    h = corpus_hash(rows)
    assert len(h) == 64 and h == corpus_hash(list(reversed(rows))) == corpus_hash(pd.DataFrame(rows))
    assert h == corpus_hash([to_chat_row(r) for r in rows])  # chat rows or curated rows: same content
    assert h == corpus_hash([{**r, C.SELECTION_DISTANCE: 9.0} for r in rows])  # manifest-only fields do not count
    assert h != corpus_hash([*rows[:2], {**rows[2], C.COMPLETION: "<think>x</think>\\boxed{1}"}])
    assert h != corpus_hash(rows[:2])
