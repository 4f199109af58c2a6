"""The dev suite: the deterministic carve (pure) and the questions stage that holds it out of training,
keeps it disjoint from the eval suites and records it in MLflow (real MLflow store, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ray_distill import columns as C
from ray_distill.config import ConfigError, config_from_dict
from ray_distill.data.dev import carve, seeded_order, seeded_sample
from ray_distill.data.stage import load_questions, split_dev
from ray_distill.tracking import NullTracker, start_tracker


def _pool(n: int) -> list[dict]:
    return [{C.QUESTION_ID: f"q{i}", C.QUESTION: f"question {i}"} for i in range(n)]


def test_carve_is_deterministic_disjoint_and_keeps_pool_order():
    pool = _pool(50)
    train, dev = carve(pool, 10, seed=0)
    assert len(train) == 40 and len(dev) == 10
    ids = lambda rows: [r[C.QUESTION_ID] for r in rows]  # noqa: E731
    assert not set(ids(train)) & set(ids(dev)) and set(ids(train)) | set(ids(dev)) == set(ids(pool))
    assert ids(train) == [i for i in ids(pool) if i not in set(ids(dev))]  # pool order kept
    assert carve(pool, 10, seed=0) == (train, dev)
    assert ids(carve(pool, 10, seed=1)[1]) != ids(dev)  # the seed chooses
    # the choice depends on the ids, not on the pool's order: a reshuffled pool carves the same questions
    assert set(ids(carve(list(reversed(pool)), 10, seed=0)[1])) == set(ids(dev))
    assert set(ids(dev)) == set(seeded_order(ids(pool), 0)[:10])


def test_carve_refuses_to_leave_nothing_to_train_on():
    with pytest.raises(ValueError, match="carving 5 dev questions out of a pool of 5"):
        carve(_pool(5), 5, seed=0)


EVAL = [{"name": "arith", "synthetic": {"family": "arith", "num_questions": 30, "min_difficulty": 2, "seed": 7}}]


def _cfg(tmp_path, **dev) -> object:
    return config_from_dict({"storage": str(tmp_path), "name": "devtest",
                             "questions": {"synthetic": {"family": "arith", "num_questions": 80, "seed": 1}},
                             "teachers": [{"name": "t", "engine": {"kind": "scripted", "persona": "concise"}}],
                             "eval": {"suites": EVAL}, "dev": dev})


def test_carved_dev_suite_leaves_the_pool_and_is_recorded(tmp_path):
    cfg = _cfg(tmp_path, num_questions=12, seed=4)
    tracker = start_tracker(True, None, "dev-test", cfg.storage, run_name="questions")
    pool, suites = load_questions(cfg, tracker)
    train, dev = split_dev(cfg, pool, suites, tracker)
    tracker.end()
    (rows,) = dev.values()
    assert list(dev) == ["dev"] and len(rows) == 12 and len(train) == len(pool) - 12
    assert not {r[C.QUESTION] for r in rows} & {r[C.QUESTION] for r in train}
    assert not {r[C.QUESTION] for r in rows} & {r[C.QUESTION] for r in suites["arith"]}
    assert split_dev(cfg, pool, suites, NullTracker())[1] == dev  # every command carves the same questions

    client = MlflowClient(tracker.tracking_uri)
    run = client.get_run(tracker.run_id)
    assert run.data.metrics["dev/questions"] == 12 and run.data.params["dev_source"] == "carved"
    (tmp_path / "artifacts").mkdir()
    logged = json.loads(Path(client.download_artifacts(tracker.run_id, "dev_questions.json",
                                                       str(tmp_path / "artifacts"))).read_text())
    table = dict(zip(logged["columns"], zip(*logged["data"])))
    assert sorted(table[C.QUESTION_ID]) == sorted(r[C.QUESTION_ID] for r in rows)


def test_configured_dev_suite_drops_questions_that_an_eval_suite_holds(tmp_path):
    suite_rows = load_questions(_cfg(tmp_path, num_questions=1), NullTracker(), write_rejects=False)[1]["arith"]
    dev_file = tmp_path / "dev.jsonl"
    texts = [suite_rows[0][C.QUESTION], "1+1+1+1", "2-1-1-1", "3+3-3+3"]  # the first one is an eval question
    dev_file.write_text("".join(json.dumps({"question": q, "answer": "0"}) + "\n" for q in texts))
    cfg = _cfg(tmp_path, suite={"name": "held_out", "path": str(dev_file)})
    pool, suites = load_questions(cfg, NullTracker())
    train, dev = split_dev(cfg, pool, suites, NullTracker())
    assert [r[C.QUESTION] for r in dev["held_out"]] == texts[1:] and train == pool
    assert not set(texts) & {r[C.QUESTION] for r in pool}  # held out of training like an eval suite
    rejects = (tmp_path / "devtest" / "rejects" / "dev_overlap.jsonl").read_text().splitlines()
    assert len(rejects) == 1 and json.loads(rejects[0])[C.REASON] == "contaminated:arith"


def test_a_carve_larger_than_the_pool_is_a_config_error(tmp_path):
    cfg = _cfg(tmp_path, num_questions=500)
    pool, suites = load_questions(cfg, NullTracker(), write_rejects=False)
    with pytest.raises(ConfigError, match=r"^dev.num_questions: carving 500 dev questions out of a pool of 80"):
        split_dev(cfg, pool, suites, NullTracker())


def test_held_out_means_held_out_by_text_not_only_by_id(tmp_path):
    """A problem present twice in the pool under two ids: when one copy is carved into the dev suite, the other
    leaves the training pool too (rejects dev_twins). And an eval question copied into a question file (other
    spacing and case) leaves the pool even with decontamination off: exact normalised matches always go."""
    suite_rows = load_questions(_cfg(tmp_path, num_questions=1), NullTracker(), write_rejects=False)[1]["arith"]
    copied = suite_rows[0][C.QUESTION]
    rows = [{"id": f"q{i}", "question": f"{i}+{i}-{i}", "answer": str(i % 10)} for i in range(40)]
    rows += [{"id": f"twin{i}", "question": f"{i}+{i}-{i}", "answer": str(i % 10)} for i in range(40)]
    rows.append({"id": "leak", "question": "  " + copied.upper().replace("+", " + ") + " ", "answer": "0"})
    qfile = tmp_path / "pool.jsonl"
    qfile.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config_from_dict({"storage": str(tmp_path), "name": "devtest", "questions": {
        "path": str(qfile), "fields": {"question_id": "id"}, "decontamination": {"enabled": False}},
        "teachers": [{"name": "t", "engine": {"kind": "scripted", "persona": "concise"}}],
        "eval": {"suites": EVAL}, "dev": {"num_questions": 10, "seed": 2}})
    pool, suites = load_questions(cfg, NullTracker())
    assert "leak" not in {r[C.QUESTION_ID] for r in pool} and len(pool) == 80
    train, dev = split_dev(cfg, pool, suites, NullTracker())
    dev_texts = {r[C.QUESTION] for r in dev["dev"]}
    assert not dev_texts & {r[C.QUESTION] for r in train}  # no dev problem left in training, under any id
    twins = (tmp_path / "devtest" / "rejects" / "dev_twins.jsonl").read_text().splitlines()
    assert len(train) + len(dev["dev"]) + len(twins) == 80 and len(twins) >= 1
    assert all(json.loads(t)[C.REASON] == "contaminated:dev" for t in twins)


def test_seeded_sample_is_chosen_by_seed_not_by_file_order():
    """The smoke test's probe (and selection.max_questions) is a seeded sample of the pool, not its first N
    questions: a reordered file gives the same questions, another seed others, a larger N a superset."""
    pool = _pool(100)
    ids = lambda rows: [r[C.QUESTION_ID] for r in rows]  # noqa: E731
    probe = seeded_sample(pool, 20, seed=0)
    assert len(probe) == 20 and ids(probe) != ids(pool[:20])
    assert ids(probe) == [i for i in ids(pool) if i in set(ids(probe))]  # pool order kept
    assert set(ids(seeded_sample(list(reversed(pool)), 20, seed=0))) == set(ids(probe))
    assert set(ids(seeded_sample(pool, 20, seed=1))) != set(ids(probe))
    assert set(ids(probe)) < set(ids(seeded_sample(pool, 40, seed=0)))
    assert seeded_sample(pool, None, seed=0) == pool and seeded_sample(pool, 500, seed=0) == pool
