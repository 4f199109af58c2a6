"""The Ray Train run name carries a fingerprint of the inputs: a crash restart or more epochs resume
the same run, a changed corpus, recipe or base model starts a new one."""

import hashlib
import json

from ray_distill.config import TrainConfig
from ray_distill.training.sft import fingerprint

EX = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}]


def test_same_inputs_same_run():
    assert fingerprint([EX], TrainConfig(), "/m") == fingerprint([[dict(e) for e in EX]], TrainConfig(), "/m")


def test_more_epochs_continue_the_same_run():
    assert fingerprint([EX], TrainConfig(epochs=3), "/m") == fingerprint([EX], TrainConfig(epochs=9), "/m")


def test_changed_corpus_recipe_or_base_starts_fresh():
    base = fingerprint([EX], TrainConfig(), "/m")
    assert fingerprint([[{"input_ids": [1, 2, 4], "labels": [-100, 2, 4]}]], TrainConfig(), "/m") != base
    assert fingerprint([[{"input_ids": [1, 2, 3], "labels": [-100, -100, 3]}]], TrainConfig(), "/m") != base
    assert fingerprint([EX], TrainConfig(lr=1e-4), "/m") != base
    assert fingerprint([EX], TrainConfig(), "/other") != base


def test_operational_settings_continue_the_same_run():
    base = fingerprint([EX], TrainConfig(), "/m")
    changed = TrainConfig(keep_checkpoints=5, max_failures=3, checkpoint_every_steps=50,
                          custom_resources={"training": 1})
    assert fingerprint([EX], changed, "/m") == base
    assert fingerprint([EX], TrainConfig(packing=True), "/m") != base  # a different batch composition


def test_one_job_hashes_as_before_launches_had_several():
    """Runs made before multi-job launches keep their names (and so resume)."""
    recipe = TrainConfig().model_dump(mode="json", exclude={"epochs", "keep_checkpoints", "max_failures",
                                                              "checkpoint_every_steps", "custom_resources"})
    h = hashlib.sha1(json.dumps([recipe, "/m"], sort_keys=True).encode())
    h.update(b"[1, 2, 3]")
    h.update(b"[-100, 2, 3]")
    assert fingerprint([EX], TrainConfig(), "/m") == h.hexdigest()[:10]


def test_how_rows_split_into_jobs_is_part_of_the_run():
    two = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [-100, 5]}]
    together = fingerprint([two], TrainConfig(), "/m")
    apart = fingerprint([two[:1], two[1:]], TrainConfig(), "/m")
    assert together != apart != fingerprint([two[:1], two[1:], []], TrainConfig(), "/m")


def test_more_epochs_start_a_multi_job_launch_afresh():
    """A resume continues only the job of the latest checkpoint: the others would keep their old epochs."""
    jobs = [EX, [{"input_ids": [4, 5], "labels": [-100, 5]}]]
    assert fingerprint(jobs, TrainConfig(epochs=3), "/m") != fingerprint(jobs, TrainConfig(epochs=9), "/m")
    assert fingerprint(jobs, TrainConfig(max_failures=3), "/m") == fingerprint(jobs, TrainConfig(), "/m")
