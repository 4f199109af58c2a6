"""The Ray Train run name carries a fingerprint of the inputs: a crash restart or more epochs resume
the same run, a changed corpus, recipe or base model starts a new one."""

import hashlib
import json

from ray_distill.config import TrainConfig
import numpy as np

from ray_distill.training.sft import example_digest, fingerprint

EX = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}]


def fp(jobs: list[list[dict]], cfg: TrainConfig, base: str) -> str:
    """:func:`fingerprint` of jobs given as examples (the tokenization tasks send their digests)."""
    return fingerprint([[example_digest(e) for e in job] for job in jobs], cfg, base)


def test_an_examples_digest_is_the_same_from_lists_or_int32_arrays():
    arrays = {"input_ids": np.array([1, 2, 3], dtype=np.int32), "labels": np.array([-100, 2, 3], dtype=np.int32)}
    assert example_digest(arrays) == example_digest(EX[0])
    assert example_digest({"input_ids": [1, 2, 3], "labels": [-100, -100, 3]}) != example_digest(EX[0])


def test_same_inputs_same_run():
    assert fp([EX], TrainConfig(), "/m") == fp([[dict(e) for e in EX]], TrainConfig(), "/m")


def test_more_epochs_continue_the_same_run():
    assert fp([EX], TrainConfig(epochs=3), "/m") == fp([EX], TrainConfig(epochs=9), "/m")


def test_changed_corpus_recipe_or_base_starts_fresh():
    base = fp([EX], TrainConfig(), "/m")
    assert fp([[{"input_ids": [1, 2, 4], "labels": [-100, 2, 4]}]], TrainConfig(), "/m") != base
    assert fp([[{"input_ids": [1, 2, 3], "labels": [-100, -100, 3]}]], TrainConfig(), "/m") != base
    assert fp([EX], TrainConfig(lr=1e-4), "/m") != base
    assert fp([EX], TrainConfig(), "/other") != base


def test_operational_settings_continue_the_same_run():
    base = fp([EX], TrainConfig(), "/m")
    changed = TrainConfig(keep_checkpoints=5, max_failures=3, checkpoint_every_steps=50,
                          custom_resources={"training": 1})
    assert fp([EX], changed, "/m") == base
    assert fp([EX], TrainConfig(packing=True), "/m") != base  # a different batch composition


def test_one_job_hashes_its_recipe_base_and_example_digests_in_order():
    """The driver hashes the examples by the digests the tokenization tasks computed (it never holds the ids)."""
    recipe = TrainConfig().model_dump(mode="json", exclude={"epochs", "keep_checkpoints", "max_failures",
                                                              "checkpoint_every_steps", "custom_resources"})
    h = hashlib.sha1(json.dumps([recipe, "/m"], sort_keys=True).encode())
    h.update(hashlib.sha1(b"[1, 2, 3]|[-100, 2, 3]").hexdigest().encode())
    assert fp([EX], TrainConfig(), "/m") == h.hexdigest()[:10]


def test_how_rows_split_into_jobs_is_part_of_the_run():
    two = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [-100, 5]}]
    together = fp([two], TrainConfig(), "/m")
    apart = fp([two[:1], two[1:]], TrainConfig(), "/m")
    assert together != apart != fp([two[:1], two[1:], []], TrainConfig(), "/m")


def test_more_epochs_start_a_multi_job_launch_afresh():
    """A resume continues only the job of the latest checkpoint: the others would keep their old epochs."""
    jobs = [EX, [{"input_ids": [4, 5], "labels": [-100, 5]}]]
    assert fp(jobs, TrainConfig(epochs=3), "/m") != fp(jobs, TrainConfig(epochs=9), "/m")
    assert fp(jobs, TrainConfig(max_failures=3), "/m") == fp(jobs, TrainConfig(), "/m")
