"""The streaming curation plane on the shared local cluster: generate what is missing from the workers,
grade into question buckets, select per bucket; the same rows and verdicts as the driver-side path."""

from __future__ import annotations

import json

import fsspec
import pandas as pd
import pytest

from ray_distill import columns as C
from ray_distill.config import EngineConfig, SamplingConfig, TeacherConfig
from ray_distill.curation import plane
from ray_distill.curation.adapters import GradeBatch
from ray_distill.curation.selection import select_questions, char_tokenize
from ray_distill.generation.store import GenerationStore
from ray_distill.synthetic.tasks import make_questions


def _teacher(persona: str = "concise") -> TeacherConfig:
    return TeacherConfig(name=persona, engine=EngineConfig(kind="scripted", persona=persona),
                         sampling=SamplingConfig(temperature=0.8, max_tokens=256))


def test_bucket_of_is_stable_and_spreads():
    ids = pd.Series([f"q{i}" for i in range(400)])
    b = plane.bucket_of(ids, 8)
    assert b == plane.bucket_of(ids, 8) and set(b) == set(range(8))
    assert min(pd.Series(b).value_counts()) > 20  # no bucket starved
    assert plane.bucket_of(pd.Series(["q7"]), 1) == [0]


def test_generation_rejects_name_stage_and_reason():
    graded = pd.DataFrame({C.QUESTION_ID: ["a", "a", "a", "b"], C.TEACHER: "t", C.SAMPLE_INDEX: [0, 1, 2, 0],
                           C.FORMAT_OK: [True, True, False, True], C.CORRECT: [True, True, True, False],
                           C.REASON: ["", "", "missing_think_open", "wrong_answer"]})
    rejects = plane.generation_rejects(graded, graded.iloc[[0]])
    got = {(r[C.QUESTION_ID], r[C.SAMPLE_INDEX]): (r[C.STAGE], r[C.REASON]) for r in rejects.to_dict("records")}
    assert got == {("a", 1): ("select", "not_among_farthest_P"), ("a", 2): ("verify", "missing_think_open"),
                   ("b", 0): ("verify", "wrong_answer")}


def test_an_adaptive_round_requests_its_new_samples_and_the_retries_of_failed_ones():
    """A chunk of adaptive sampling's rounds (adaptive_stream): only the round's questions, each up to its count;
    grading asks for the samples from where the last round stopped plus the failed ones the round retried (what
    the driver lists)."""
    batch = pd.DataFrame(make_questions("arith", 3, 1, 2, seed=4))
    a, b, c = batch[C.QUESTION_ID].astype(str)
    generate = plane._request_rows(batch, _teacher(), {"n": {a: 4, c: 2}})
    assert sorted(zip(generate[C.QUESTION_ID], generate[C.SAMPLE_INDEX])) == sorted(
        [(a, 0), (a, 1), (a, 2), (a, 3), (c, 0), (c, 1)])
    grade = plane._request_rows(batch, _teacher(), {"n": {a: 4, c: 2}, "from": {a: 2, c: 0}, "retry": {a: [0]}})
    assert sorted(zip(grade[C.QUESTION_ID], grade[C.SAMPLE_INDEX])) == sorted([(a, 0), (a, 2), (a, 3), (c, 0), (c, 1)])
    # the same content keys as a fixed-n request; a batch with none of the round's questions yields no row
    fixed = plane._request_rows(batch, _teacher(), 4)
    assert set(generate[plane.KEY]) <= set(fixed[plane.KEY])
    assert plane._request_rows(batch[batch[C.QUESTION_ID].astype(str) == b], _teacher(), {"n": {a: 4}}).empty


def test_index_and_bucket_reads_see_what_other_processes_wrote_despite_a_listing_cache(tmp_path):
    """On a storage whose filesystem caches listings without expiry (as s3fs and gcsfs do), a reused worker
    that listed the store or a bucket before must still see every part written since by other processes."""
    import uuid

    from tests.data.test_fs import CachingMemoryFileSystem  # registers the cachedmem:// protocol

    root = f"cachedmem://plane-{uuid.uuid4().hex}"
    store, other = GenerationStore(f"{root}/gens"), CachingMemoryFileSystem(skip_instance_cache=True)
    rows = pd.DataFrame([{c: "x" for c in plane.STORED_COLUMNS} | {C.SEED: 1, C.NUM_TOKENS: 1, C.SAMPLE_INDEX: 0,
                                                                   C.ERROR: "", plane.KEY: "k1"}])
    store.write_part("t", rows)
    assert set(store.index("t")) == {"k1"}  # this worker has now listed the teacher's directory
    with other.open(f"{store.teacher_dir('t')}/part-from-another-worker.parquet", "wb") as f:
        rows.assign(**{plane.KEY: "k2"}).to_parquet(f, index=False)
    assert len(store.fs.ls(store.teacher_dir("t"))) == 1  # the cached listing is stale...
    assert set(store.index("t")) == {"k1", "k2"}  # ...and the index is not

    def graded_rows(*ids):
        return pd.DataFrame({C.QUESTION_ID: list(ids), C.REASON: "", C.NUM_TOKENS: 1, C.FORMAT_OK: True,
                             C.CORRECT: True})

    graded = f"{root}/graded"
    plane._write_buckets(graded_rows("q1", "q2"), graded, 1)  # as a plan's last step writes them
    assert len(plane.read_buckets(graded)) == 2 and plane.parquet_rows(graded) == 2
    (bucket,) = plane.bucket_dirs(graded)
    with other.open(f"{bucket}/part-late.parquet", "wb") as f:
        graded_rows("q3").to_parquet(f, index=False)
    with other.open(f"{root}/graded/bucket=7/part-new.parquet", "wb") as f:
        graded_rows("q4").to_parquet(f, index=False)
    assert sorted(plane.read_buckets(graded)[C.QUESTION_ID]) == ["q1", "q2", "q3", "q4"]
    assert plane.parquet_rows(graded) == 4 and len(plane.bucket_dirs(graded)) == 2


@pytest.mark.slow
def test_curate_streams_into_the_store_buckets_and_selection(ray_local, tmp_path, monkeypatch):
    monkeypatch.setattr(plane, "ROWS_PER_BUCKET", 50)  # several buckets at test size
    questions = make_questions("arith", 40, 1, 3, seed=3)
    qurl = plane.write_questions(questions, str(tmp_path / "work" / "questions.parquet"))
    store = GenerationStore(str(tmp_path / "gens"))
    teacher = _teacher()
    grading = plane.Grading(max_tokens=200, require_think=True, tokenizer=None)
    selection = plane.Selection(p=2, seed=0, tokenizer=None)
    out = plane.curate(store, qurl, teacher, 4, str(tmp_path / "work"), grading, selection,
                       rejects_url=str(tmp_path / "rejects"))
    c = out.counters
    assert (c["requested"], c["generated"], c["cached"], c["failed"]) == (160, 160, 0, 0)
    assert c["completion_tokens"] > 0 and sum(c["verdicts"].values()) == 160 and c["verdicts"]["kept"] == c["correct"]
    assert len(plane.bucket_dirs(out.graded_url)) == 4  # 160 rows / 50 per bucket

    # every sample of a question sits in one bucket, and the rows are the driver-side path's rows
    graded = out.read_graded()
    assert graded.groupby(C.QUESTION_ID).size().eq(4).all() and len(graded) == 160
    by_bucket = {b: set(plane.read_parquet_dir(b)[C.QUESTION_ID]) for b in plane.bucket_dirs(out.graded_url)}
    assert sum(len(s) for s in by_bucket.values()) == 40
    stored, _ = store.get_or_generate(questions, teacher.model_copy(
        update={"sampling": teacher.sampling.model_copy(update={"n": 4})}))
    key = [C.QUESTION_ID, C.SAMPLE_INDEX]
    assert graded.sort_values(key)[C.COMPLETION].tolist() == stored.sort_values(key)[C.COMPLETION].tolist()
    expected = GradeBatch(max_tokens=200, require_think=True)(stored)
    assert int((expected[C.CORRECT] & expected[C.FORMAT_OK]).sum()) == c["correct"]

    # selection per bucket = selection over everything
    selected = out.read_selected()
    ok = expected[expected[C.CORRECT] & expected[C.FORMAT_OK]]
    whole = select_questions(ok, 2, 0, char_tokenize)
    assert sorted(zip(selected[C.QUESTION_ID], selected[C.SAMPLE_INDEX])) == sorted(
        zip(whole[C.QUESTION_ID], whole[C.SAMPLE_INDEX]))
    assert out.selection["rows"] == len(selected)
    fs = fsspec.filesystem("file")
    rejects = [json.loads(line) for f in sorted(fs.find(str(tmp_path / "rejects"))) for line in open(f)]
    assert len(rejects) + len(selected) == 160 and all(r[C.STAGE] in ("verify", "select") for r in rejects)

    # the paper's order selects only among the questions compression kept; none kept: a clear error
    keep = frozenset(q[C.QUESTION_ID] for q in questions[:5])
    paper = plane.select_buckets(out.graded_url, str(tmp_path / "paper"), plane.Selection(2, 0, None, keep), None)
    assert set(plane.read_parquet_dir(str(tmp_path / "paper"))[C.QUESTION_ID]) <= keep and 0 < paper["rows"] <= 10
    with pytest.raises(RuntimeError, match="no verified-correct teacher samples"):
        plane.select_buckets(out.graded_url, str(tmp_path / "none"), plane.Selection(2, 0, None, frozenset()), None)

    # a rerun with a larger n generates only the new samples, and counts the rest as cached
    more = plane.curate(store, qurl, teacher, 5, str(tmp_path / "work2"), grading)
    assert (more.counters["generated"], more.counters["cached"], more.counters["requested"]) == (40, 160, 200)
    assert more.counters["cached_completion_tokens"] == c["completion_tokens"]
    assert more.selected_url is None and len(more.read_graded()) == 200


def test_read_parquet_reads_every_part_and_leaves_ray_datas_default_as_it_was(ray_local, tmp_path):
    """The plane's reads of its own small files (``plane.read_parquet``: Ray Data's first parquet datasource, no
    footer-reading actor pool per read) give every row of every part; the process's DataContext keeps the
    datasource it had, after a read and after a read that failed."""
    import ray.data

    for i in range(3):
        pd.DataFrame({C.QUESTION_ID: [f"q{i}-{j}" for j in range(5)]}).to_parquet(tmp_path / f"part-{i}.parquet")
    ctx = ray.data.DataContext.get_current()
    before = ctx.use_datasource_v2
    rows = plane.read_parquet(str(tmp_path)).take_all()
    assert sorted(r[C.QUESTION_ID] for r in rows) == sorted(f"q{i}-{j}" for i in range(3) for j in range(5))
    assert ctx.use_datasource_v2 == before
    with pytest.raises(Exception):
        plane.read_parquet(str(tmp_path / "missing")).materialize()
    assert ctx.use_datasource_v2 == before


@pytest.mark.timeout(90)  # a hang fails here (it takes ~12 s) instead of stalling the suite
def test_grading_finishes_while_an_idle_engine_host_holds_a_cpu(ray_local, tmp_path):
    """Between two stages that sample, an idle engine host keeps its CPU (generation.hosts leaves one free): the
    grading plan (a grader actor on that CPU, the question file's read, the writes) must not wait for another. On
    the 2-CPU test cluster a read task that asked for a CPU waited forever."""
    import ray

    questions = make_questions("arith", 12, 1, 2, seed=4)
    qurl = plane.write_questions(questions, str(tmp_path / "work" / "questions.parquet"))
    store = GenerationStore(str(tmp_path / "gens"))
    teacher = _teacher()
    made = plane.generate_missing(store, qurl, teacher, 2, str(tmp_path / "work"))
    holder = ray.remote(num_cpus=1)(type("IdleHost", (), {"ready": lambda self: True})).remote()
    try:
        ray.get(holder.ready.remote())
        out = plane.grade(store, qurl, teacher, 2, str(tmp_path / "work"),
                          plane.Grading(max_tokens=200, require_think=True, tokenizer=None, num_graders=1), made)
    finally:
        ray.kill(holder)
    assert out.counters["requested"] == 24 and sum(out.counters["verdicts"].values()) == 24
