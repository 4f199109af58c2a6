"""The Ray Train run name carries a fingerprint of the inputs: a crash restart or more epochs resume
the same run, a changed corpus, recipe or base model starts a new one."""

from ray_distill.config import TrainConfig
from ray_distill.training.sft import fingerprint

EX = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}]


def test_same_inputs_same_run():
    assert fingerprint(EX, TrainConfig(), "/m") == fingerprint([dict(e) for e in EX], TrainConfig(), "/m")


def test_more_epochs_continue_the_same_run():
    assert fingerprint(EX, TrainConfig(epochs=3), "/m") == fingerprint(EX, TrainConfig(epochs=9), "/m")


def test_changed_corpus_recipe_or_base_starts_fresh():
    base = fingerprint(EX, TrainConfig(), "/m")
    assert fingerprint([{"input_ids": [1, 2, 4], "labels": [-100, 2, 4]}], TrainConfig(), "/m") != base
    assert fingerprint([{"input_ids": [1, 2, 3], "labels": [-100, -100, 3]}], TrainConfig(), "/m") != base
    assert fingerprint(EX, TrainConfig(lr=1e-4), "/m") != base
    assert fingerprint(EX, TrainConfig(), "/other") != base


def test_operational_settings_continue_the_same_run():
    base = fingerprint(EX, TrainConfig(), "/m")
    changed = TrainConfig(keep_checkpoints=5, max_failures=3, checkpoint_every_steps=50)
    assert fingerprint(EX, changed, "/m") == base
    assert fingerprint(EX, TrainConfig(packing=True), "/m") != base  # a different batch composition
