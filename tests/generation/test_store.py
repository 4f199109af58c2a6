"""Generation store: content keys, caching across calls and n, rejects, atomic parts."""

from __future__ import annotations

import uuid

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ray_distill import columns as C
from ray_distill.config import EngineConfig, SamplingConfig, TeacherConfig
from ray_distill.generation.store import KEY, STORED_COLUMNS, GenerationStore, generation_key, teacher_fingerprint
from ray_distill.synthetic.tasks import make_questions
from ray_distill.synthetic.teachers import write_solution


def _teacher(n: int = 2, **sampling) -> TeacherConfig:
    return TeacherConfig(name="concise", engine=EngineConfig(kind="scripted", persona="concise"),
                         sampling=SamplingConfig(n=n, **sampling))


def _rows(counters: dict) -> dict:
    return {k: counters[k] for k in ("requested", "cached", "generated", "failed")}


def test_keys_ignore_n_but_not_sampling_or_teacher():
    fp = teacher_fingerprint(_teacher(n=2))
    assert generation_key("1+2", fp, 0) == generation_key("1+2", teacher_fingerprint(_teacher(n=8)), 0)
    others = [
        generation_key("1+3", fp, 0),
        generation_key("1+2", fp, 1),
        generation_key("1+2", teacher_fingerprint(_teacher(temperature=0.3)), 0),
        generation_key("1+2", teacher_fingerprint(_teacher(seed=1)), 0),
        generation_key("1+2", teacher_fingerprint(_teacher().model_copy(update={"name": "other"})), 0),
        generation_key("1+2", teacher_fingerprint(
            _teacher().model_copy(update={"engine": EngineConfig(kind="scripted", persona="verbose")})), 0),
    ]
    assert len({generation_key("1+2", fp, 0), *others}) == len(others) + 1


def test_parts_on_any_fsspec_url_and_temp_names_ignored():
    store = GenerationStore(f"memory://store-{uuid.uuid4().hex}")
    df = pd.DataFrame([{c: "x" for c in STORED_COLUMNS} | {C.DIFFICULTY: 1, C.SAMPLE_INDEX: 0, C.SEED: 1,
                                                             C.NUM_TOKENS: 1, KEY: "k1"}])
    path = store.write_part("t", df)
    store.fs.pipe_file(f"{store.teacher_dir('t')}/_tmp-crashed.parquet", b"half a file")
    assert store.part_files("t") == [path]
    assert store.load("t", {"k1"})[KEY].tolist() == ["k1"] and store.load("t", {"k2"}).empty


def _stored(keys: list[str], error: str = "") -> pd.DataFrame:
    return pd.DataFrame([{c: "x" for c in STORED_COLUMNS} | {C.DIFFICULTY: 1, C.SAMPLE_INDEX: 0, C.SEED: 1,
                                                             C.NUM_TOKENS: 5, C.ERROR: error, KEY: k} for k in keys])


@pytest.mark.parametrize("broken", [b"", b"PAR1 half a footer"])
def test_empty_or_truncated_part_is_skipped_with_a_warning_naming_it(broken, caplog):
    store = GenerationStore(f"memory://store-{uuid.uuid4().hex}")
    store.write_part("t", _stored(["k1", "k2"]))
    bad = f"{store.teacher_dir('t')}/part-broken.parquet"  # a crash between rename and the data reaching disk
    store.fs.pipe_file(bad, broken)
    assert bad in store.part_files("t")
    assert sorted(store.load("t")[KEY]) == ["k1", "k2"] and sorted(store.load("t", {"k1"})[KEY]) == ["k1"]
    assert set(store.index("t")) == {"k1", "k2"} and store.mean_completion_tokens(_teacher()) is None
    assert any(bad in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_temp_parts_of_crashed_writes_are_removed_once_old(tmp_path):
    import os
    import time

    store = GenerationStore(str(tmp_path / "gens"))
    store.write_part("t", _stored(["k1"]))
    old, live = tmp_path / "gens" / "t" / "_tmp-crashed.parquet", tmp_path / "gens" / "t" / "_tmp-writing.parquet"
    old.write_bytes(b"half")
    live.write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    assert store.clean_temp_parts("t") == [str(old)]
    assert not old.exists() and live.exists() and len(store.part_files("t")) == 1


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_part_buffer_writes_by_rows_and_by_time():
    from ray_distill.generation.store import PartBuffer

    clock = FakeClock()
    store = GenerationStore(f"memory://store-{uuid.uuid4().hex}")
    buf = PartBuffer(store, "t", flush_rows=4, flush_s=30.0, clock=clock)
    assert buf.seconds_left() is None and not buf.due()
    buf.add(_stored(["a"]))
    clock.now = 29.0
    buf.add(_stored(["b"], error="timeout"))
    assert buf.parts == [] and buf.seconds_left() == 1.0  # the oldest waiting row arrived at 0
    clock.now = 30.5
    assert buf.due()
    buf.add(_stored(["c"]))  # due by time: a success part and a rejects part
    assert len(buf.parts) == 2 and buf.rows == 0 and buf.seconds_left() is None
    assert sorted(store.load("t")[KEY]) == ["a", "c"] and store.load("t", rejects=True)[KEY].tolist() == ["b"]
    buf.add(_stored(["d", "e", "f", "g"]))  # due by rows, at once
    assert len(buf.parts) == 3 and sorted(store.load("t")[KEY]) == ["a", "c", "d", "e", "f", "g"]


def test_persist_writes_waiting_rows_while_the_engine_is_slow_and_when_it_fails():
    """A batch that waits longer than flush_s is written while the next one is still being generated (the
    crash window is seconds, not flush_rows rows), and what finished is written when the stream fails."""
    import threading
    import time

    clock = FakeClock()
    store = GenerationStore(f"memory://store-{uuid.uuid4().hex}", flush_rows=1000, flush_s=30.0, clock=clock)
    slow_batch_started, written_meanwhile = threading.Event(), []

    def engine():
        yield _stored(["a", "b"])
        slow_batch_started.set()  # the next batch takes long: a fake second passes every poll
        deadline = time.monotonic() + 10
        while not store.part_files("t") and time.monotonic() < deadline:
            clock.now += 3.0
            time.sleep(0.01)
        written_meanwhile.append(len(store.part_files("t")))
        yield _stored(["c"])
        raise RuntimeError("engine died")

    with pytest.raises(RuntimeError, match="engine died"):
        store.persist("t", engine(), poll_s=0.01)
    assert slow_batch_started.is_set() and written_meanwhile == [1]
    assert sorted(store.load("t")[KEY]) == ["a", "b", "c"] and len(store.part_files("t")) == 2


def test_second_call_is_cached_and_larger_n_generates_only_the_extra(ray_local, tmp_path):
    store = GenerationStore(str(tmp_path / "gens"))
    questions = make_questions("arith", 6, 1, 3, seed=2)

    first, c1 = store.get_or_generate(questions, _teacher(n=2))
    assert _rows(c1) == {"requested": 12, "cached": 0, "generated": 12, "failed": 0}
    assert c1["prompts"] == 6 and c1["completion_tokens"] == first[C.NUM_TOKENS].sum() > 0
    assert c1["prompt_tokens"] == sum(len(q[C.QUESTION]) * 2 for q in questions)  # scripted: a token per char
    assert c1["wall_s"] > 0 and c1["cached_completion_tokens"] == 0
    assert list(first.columns) == STORED_COLUMNS and len(first) == 12
    assert all(r.completion == write_solution("concise", r.question, r.seed) for r in first.itertuples())

    again, c2 = store.get_or_generate(questions, _teacher(n=2))
    assert _rows(c2) == {"requested": 12, "cached": 12, "generated": 0, "failed": 0}
    assert c2["completion_tokens"] == c2["prompt_tokens"] == c2["prompts"] == 0
    assert c2["cached_completion_tokens"] == c1["completion_tokens"]
    assert c2["cached_prompt_tokens"] == c1["prompt_tokens"]
    pd.testing.assert_frame_equal(first, again)

    more, c3 = store.get_or_generate(questions, _teacher(n=2), n=4)
    assert _rows(c3) == {"requested": 24, "cached": 12, "generated": 12, "failed": 0}
    assert set(more.groupby(C.QUESTION_ID)[C.SAMPLE_INDEX].apply(lambda s: tuple(sorted(s)))) == {(0, 1, 2, 3)}
    pd.testing.assert_frame_equal(more[more[C.SAMPLE_INDEX] < 2].reset_index(drop=True), first)
    assert not any(p.name.startswith("_tmp-") for p in (tmp_path / "gens" / "concise").iterdir())

    # per-question n (adaptive rounds): one call, each question topped up to its own count
    ids = [q[C.QUESTION_ID] for q in questions]
    want = {qid: 1 + i for i, qid in enumerate(ids)}  # 1..6 samples
    mixed, c4 = store.get_or_generate(questions, _teacher(n=2), n=want)
    assert _rows(c4) == {"requested": 21, "cached": 1 + 2 + 3 + 4 + 4 + 4, "generated": 1 + 2, "failed": 0}
    assert mixed.groupby(C.QUESTION_ID).size().to_dict() == want
    assert mixed[C.QUESTION_ID].tolist() == [qid for qid in ids for _ in range(want[qid])]  # request order
    pd.testing.assert_frame_equal(mixed[mixed[C.SAMPLE_INDEX] < 4].reset_index(drop=True),
                                  more[more[C.SAMPLE_INDEX] < more[C.QUESTION_ID].map(want)].reset_index(drop=True))
    assert store.count_cached(questions, _teacher(n=2), want) == 21
    with pytest.raises(ValueError, match="no sample count for 1 questions"):
        store.lookup(questions, _teacher(n=2), {qid: 1 for qid in ids[1:]})


def test_failed_requests_go_to_rejects_and_are_retried(ray_local, tmp_path):
    store = GenerationStore(str(tmp_path / "gens"))
    good = make_questions("max", 2, 1, 2, seed=0)
    bad = {**good[0], C.QUESTION_ID: "bad", C.QUESTION: "what is love"}

    df, counters = store.get_or_generate([*good, bad], _teacher(n=1))
    assert _rows(counters) == {"requested": 3, "cached": 0, "generated": 2, "failed": 1}
    assert df[C.ERROR].ne("").tolist() == [False, False, True]
    assert store.load("concise", rejects=True)[C.QUESTION].tolist() == ["what is love"]

    _, again = store.get_or_generate([*good, bad], _teacher(n=1))
    assert _rows(again) == {"requested": 3, "cached": 2, "generated": 0, "failed": 1}


def _openai_teacher(**engine) -> TeacherConfig:
    return TeacherConfig(name="api", engine=EngineConfig(**{"kind": "openai", "model": "m", "base_url": "http://a:1/v1",
                                                            **engine}))


def test_key_has_model_and_api_mode_but_not_endpoint_transport_or_key_name():
    key = generation_key("1+2", teacher_fingerprint(_openai_teacher()), 0)
    same = [dict(base_url="http://b:2/v1"), dict(api_key_env="OTHER_KEY"), dict(max_concurrency=2),
            dict(request_timeout_s=5), dict(max_retries=0), dict(retry_backoff_s=3)]
    assert {generation_key("1+2", teacher_fingerprint(_openai_teacher(**e)), 0) for e in same} == {key}
    for changed in (dict(model="m2"), dict(api="completions"), dict(revision="v2")):
        assert generation_key("1+2", teacher_fingerprint(_openai_teacher(**changed)), 0) != key


def test_parts_without_a_newer_column_read_back_with_its_default(ray_local, tmp_path):
    store = GenerationStore(str(tmp_path / "gens"))
    questions = make_questions("arith", 3, 1, 2, seed=4)
    first, _ = store.get_or_generate(questions, _teacher(n=1))
    (part,) = store.part_files("concise")
    pq.write_table(pq.read_table(part).drop_columns([C.PROMPT_TOKENS]), part)  # a part from before the column

    again, counters = store.get_or_generate(questions, _teacher(n=1))
    assert _rows(counters) == {"requested": 3, "cached": 3, "generated": 0, "failed": 0}
    assert (again[C.PROMPT_TOKENS] == -1).all() and counters["cached_prompt_tokens"] == 0
    pd.testing.assert_frame_equal(again.drop(columns=C.PROMPT_TOKENS), first.drop(columns=C.PROMPT_TOKENS))


def _safetensors_model(folder, seed: int, nbytes: int = 3 << 20) -> str:
    """A model folder: config.json and one safetensors file of float32 tensors drawn with ``seed``."""
    import json
    import os

    import torch
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    n = nbytes // 4 // 3
    save_file({f"layer.{i}.weight": torch.randn(n, generator=g) for i in range(3)},
              os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "qwen2"}, f)
    return str(folder)


def test_model_digest_hashes_small_files_whole_as_before(tmp_path):
    """Under the threshold the digest is the old one (name, size, every byte), so existing stores stay valid."""
    import hashlib
    import os

    from ray_distill.generation.store import model_digest

    path = _safetensors_model(tmp_path / "m", seed=0)
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        data = open(os.path.join(path, name), "rb").read()
        h.update(f"{name}\0{len(data)}\0".encode() + data)
    assert model_digest(path) == h.hexdigest()[:32]


def test_sampled_digest_changes_with_the_weights(tmp_path):
    """Above the threshold (lowered to 1 MiB here) a safetensors file is sampled: header + each tensor's first
    4 KiB + first/middle/last MiB. Weights redrawn with the same shapes (a retrain) change it; the same weights
    rewritten (another mtime) keep it; a one-byte edit outside every sampled range is the documented blind
    spot, which the whole-file digest (the default for a file this small) does see."""
    import fsspec

    from ray_distill.generation import store as S

    def digest(path, full_below=1 << 20):
        fs, root = fsspec.core.url_to_fs(path)
        files = sorted(fs.find(root, detail=True).items())
        return S._digest(path, tuple((f, int(i["size"]), str(i["mtime"])) for f, i in files), full_below)

    a = _safetensors_model(tmp_path / "a", seed=0, nbytes=6 << 20)  # 3 tensors of 2 MiB
    first, whole = digest(a), digest(a, S.FULL_HASH_BELOW)
    assert first != whole  # sampled, not hashed whole
    assert digest(_safetensors_model(tmp_path / "a", seed=0, nbytes=6 << 20)) == first  # rewritten, same weights
    assert digest(_safetensors_model(tmp_path / "a", seed=1, nbytes=6 << 20)) != first  # retrained
    _safetensors_model(tmp_path / "a", seed=0, nbytes=6 << 20)
    weights = tmp_path / "a" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # tensor data begins after the header
    for offset, seen in ((3 << 19, False), ((2 << 20) + 100, True)):  # inside tensor 0 / tensor 1's first 4 KiB
        edited = bytearray(data)
        edited[start + offset] ^= 0xFF
        weights.write_bytes(bytes(edited))
        assert (digest(a) != first) is seen and digest(a, S.FULL_HASH_BELOW) != whole
