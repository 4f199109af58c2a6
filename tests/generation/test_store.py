"""Generation store: content keys, caching across calls and n, rejects, atomic parts."""

from __future__ import annotations

import uuid

import pandas as pd

from ray_distill import columns as C
from ray_distill.config import EngineConfig, SamplingConfig, TeacherConfig
from ray_distill.generation.store import KEY, STORED_COLUMNS, GenerationStore, generation_key, teacher_fingerprint
from ray_distill.synthetic.tasks import make_questions
from ray_distill.synthetic.teachers import write_solution


def _teacher(n: int = 2, **sampling) -> TeacherConfig:
    return TeacherConfig(name="concise", engine=EngineConfig(kind="scripted", persona="concise"),
                         sampling=SamplingConfig(n=n, **sampling))


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


def test_second_call_is_cached_and_larger_n_generates_only_the_extra(ray_local, tmp_path):
    store = GenerationStore(str(tmp_path / "gens"))
    questions = make_questions("arith", 6, 1, 3, seed=2)

    first, c1 = store.get_or_generate(questions, _teacher(n=2))
    assert c1 == {"requested": 12, "cached": 0, "generated": 12, "failed": 0}
    assert list(first.columns) == STORED_COLUMNS and len(first) == 12
    assert all(r.completion == write_solution("concise", r.question, r.seed) for r in first.itertuples())

    again, c2 = store.get_or_generate(questions, _teacher(n=2))
    assert c2 == {"requested": 12, "cached": 12, "generated": 0, "failed": 0}
    pd.testing.assert_frame_equal(first, again)

    more, c3 = store.get_or_generate(questions, _teacher(n=2), n=4)
    assert c3 == {"requested": 24, "cached": 12, "generated": 12, "failed": 0}
    assert set(more.groupby(C.QUESTION_ID)[C.SAMPLE_INDEX].apply(lambda s: tuple(sorted(s)))) == {(0, 1, 2, 3)}
    pd.testing.assert_frame_equal(more[more[C.SAMPLE_INDEX] < 2].reset_index(drop=True), first)
    assert not any(p.name.startswith("_tmp-") for p in (tmp_path / "gens" / "concise").iterdir())


def test_failed_requests_go_to_rejects_and_are_retried(ray_local, tmp_path):
    store = GenerationStore(str(tmp_path / "gens"))
    good = make_questions("max", 2, 1, 2, seed=0)
    bad = {**good[0], C.QUESTION_ID: "bad", C.QUESTION: "what is love"}

    df, counters = store.get_or_generate([*good, bad], _teacher(n=1))
    assert counters == {"requested": 3, "cached": 0, "generated": 2, "failed": 1}
    assert df[C.ERROR].ne("").tolist() == [False, False, True]
    assert store.load("concise", rejects=True)[C.QUESTION].tolist() == ["what is love"]

    _, again = store.get_or_generate([*good, bad], _teacher(n=1))
    assert again == {"requested": 3, "cached": 2, "generated": 0, "failed": 1}
