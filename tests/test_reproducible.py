"""Same config + same seed, same corpus: the curation (teacher generation through the store, verification on a
Ray Data actor pool, farthest-P selection, the corpus writer) run twice from scratch, in separate storages and
with the generated rows arriving in another order, writes the same corpus (content hash). The student's
sampling (compression, evaluation) is checked the same way in tests/evaluation/test_evaluate.py."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from ray_distill import columns as C
from ray_distill.config import config_from_dict
from ray_distill.data.corpus import corpus_hash
from ray_distill.generation.store import GenerationStore
from ray_distill.curation.driver import generate, select, verify
from ray_distill.data.stage import write_job_corpus
from ray_distill.pipeline import _ok, _with_n
from ray_distill.synthetic.tasks import make_questions
from ray_distill.tracking import start_tracker

pytestmark = pytest.mark.slow


def curate(storage, base: str, shuffle_seed: int | None, tracked: bool = False) -> tuple[str, int, str | None]:
    cfg = config_from_dict({
        "storage": str(storage), "seed": 3, "questions": {"synthetic": {"num_questions": 30}},
        "teachers": [{"name": "sloppy", "engine": {"kind": "scripted", "persona": "sloppy"},
                      "sampling": {"temperature": 1.0, "seed": 3}}],
        "selection": {"samples_per_question": 4, "keep_per_question": 2},
    })
    questions = make_questions("arith", 30, 1, 3, seed=11)
    t = start_tracker(tracked, None, "repro", str(storage), "job")
    gen = generate(GenerationStore(str(storage / "generations")), questions, _with_n(cfg.teachers[0], 4), t)
    if shuffle_seed is not None:  # Ray Data may hand back blocks in any order
        gen = gen.sample(frac=1.0, random_state=shuffle_seed).reset_index(drop=True)
    graded = verify(cfg, gen, base)
    order = [C.QUESTION_ID, C.SAMPLE_INDEX]
    assert graded[order].values.tolist() == gen[order].values.tolist()  # verified rows keep their input order
    selected = select(cfg, graded, base)
    assert selected[order].values.tolist() == sorted(selected[order].values.tolist())  # selection: question order
    corpus = write_job_corpus(selected, str(storage / "corpus"), t)
    t.end()
    tag = MlflowClient(t.handle().tracking_uri).get_run(t.run_id).data.tags["ray_distill.corpus_sha256"] if tracked else None
    return corpus_hash(corpus), int(_ok(graded).sum()), tag


def test_curation_twice_gives_the_same_corpus(ray_local, tiny_student_path, tmp_path):
    first, correct, tag = curate(tmp_path / "a", tiny_student_path, None, tracked=True)
    second, _, _ = curate(tmp_path / "b", tiny_student_path, shuffle_seed=7)
    assert 0 < correct < 120  # some samples are wrong: selection has real choices to make
    assert first == second == tag  # the hash the job's MLflow run is tagged with
    rows = [line for line in (tmp_path / "a" / "corpus" / "corpus.jsonl").read_text().splitlines() if line]
    assert 30 <= len(rows) <= 60 and (tmp_path / "a" / "corpus" / "corpus.jsonl").read_bytes() == \
        (tmp_path / "b" / "corpus" / "corpus.jsonl").read_bytes()
