"""The Ray Data adapter with the scripted engine: row expansion, columns, seeds, determinism."""

from __future__ import annotations

import pandas as pd
import pytest

from ray_distill import columns as C
from ray_distill.config import EngineConfig, ResourcesConfig, SamplingConfig, TeacherConfig
from ray_distill.generation.actor import GenerateBatch, generate_dataset, sample_seed
from ray_distill.synthetic.tasks import make_questions
from ray_distill.synthetic.teachers import write_solution


def _teacher(batch_size: int, n: int = 3) -> TeacherConfig:
    return TeacherConfig(name="concise", engine=EngineConfig(kind="scripted", persona="concise"),
                         sampling=SamplingConfig(n=n, seed=5), resources=ResourcesConfig(batch_size=batch_size))


def test_sample_seed_is_stable_and_distinct():
    assert sample_seed(0, "q1", 0) == sample_seed(0, "q1", 0)
    assert len({sample_seed(0, "q1", i) for i in range(100)}) == 100
    assert sample_seed(0, "q1", 0) != sample_seed(1, "q1", 0)


def test_generate_batch_pinned_sample_index_and_missing_columns():
    gen = GenerateBatch("t", {"kind": "scripted", "persona": "concise"}, {"n": 4, "seed": 5})
    rows = pd.DataFrame(make_questions("arith", 2, 2, 2, seed=0)).assign(**{C.SAMPLE_INDEX: [7, 2]})
    out = gen(rows)
    assert out[C.SAMPLE_INDEX].tolist() == [7, 2]
    qids = rows[C.QUESTION_ID].tolist()
    assert out[C.SEED].tolist() == [sample_seed(5, qids[0], 7), sample_seed(5, qids[1], 2)]
    with pytest.raises(ValueError, match="needs columns"):
        gen(rows.drop(columns=[C.ANSWER]))


def test_generate_dataset_expands_rows_deterministically(ray_local):
    questions = make_questions("arith", 7, 1, 3, seed=1) + make_questions("max", 3, 1, 3, seed=1)
    rows = [{**q, "extra": i} for i, q in enumerate(questions)]
    ds = ray_local.data.from_items(rows)
    a = generate_dataset(ds, _teacher(batch_size=4)).to_pandas()
    b = generate_dataset(ds, _teacher(batch_size=7)).to_pandas()

    assert len(a) == len(questions) * 3
    assert list(a.columns) == [*C.GENERATION_COLUMNS, "extra"]
    assert (a[C.TEACHER] == "concise").all() and (a[C.ERROR] == "").all()
    assert set(a.groupby(C.QUESTION_ID)[C.SAMPLE_INDEX].apply(lambda s: tuple(sorted(s)))) == {(0, 1, 2)}
    for r in a.itertuples():
        assert r.seed == sample_seed(5, r.question_id, r.sample_index)
        assert r.completion == write_solution("concise", r.question, r.seed)
        assert r.num_tokens == len(r.completion)
    key = [C.QUESTION_ID, C.SAMPLE_INDEX]
    pd.testing.assert_frame_equal(a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True))
