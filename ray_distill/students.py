"""The base student of a job: a real Hugging Face model (``student.model``: a hub id, loaded through Hugging
Face's cache by every process that needs it, or a path/URL), a built-in pretrained preset
(``ray_distill.presets``, e.g. ``smollm2-135m``), or a synthetic preset whose "pretraining" (single-step
facts of every task family, optionally multi-step chains of a pretraining-only family) runs once with Ray
Train and is cached under ``<storage>/cache/students/<key>`` for every later job and test."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile

from ray_distill.config import JobConfig
from ray_distill.data.fs import absolute, exists, join, write_text
from ray_distill.models import check_model, is_hub_id, model_ref
from ray_distill.presets import build_preset, is_preset, preset_url
from ray_distill.tracking import Tracker

logger = logging.getLogger(__name__)

_READY = "READY"


def prepare_student(cfg: JobConfig, tracker: Tracker) -> str:
    """The base student as a model reference (``ray_distill.models``): a hub id ``org/name[@revision]``
    as it is, or the storage URL of a ``save_pretrained`` directory (weights, config, tokenizer, chat
    template; a local path is made absolute). Never a driver-local copy of a remote URL: every process
    that loads it (actors, Train workers, graders) materialises it on its own node (``models.loadable``)."""
    s = cfg.student
    if s.model:
        check_model(s.model, "student.model")
        ref = model_ref(s.model, s.revision)
        tracker.log_params({"student": ref})
        return ref if is_hub_id(ref) else absolute(s.model)
    if is_preset(s.preset):
        url = preset_url(s.preset, cfg.storage)
        tracker.log_params({"student.base.path": url})
        return build_preset(s.preset, cfg.storage)
    spec = base_spec(cfg)
    key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    url = join(cfg.storage, "cache", "students", f"{s.preset}-{key}")
    tracker.log_params({f"student.base.{k}": v for k, v in spec.items()} | {"student.base.path": url})
    if exists(join(url, _READY)):
        logger.info("base student %s found in cache: %s", s.preset, url)
        tracker.set_tags({"student.cached": "true"})
        return absolute(url)
    _pretrain(cfg, url, tracker)
    write_text(join(url, _READY), json.dumps(spec))
    return absolute(url)


def base_spec(cfg: JobConfig) -> dict:
    """What a synthetic base student is built from: its cache key is a hash of this."""
    s = cfg.student
    spec = {"preset": s.preset, "rows": s.base_rows, "epochs": s.base_epochs, "lr": s.base_lr, "seed": cfg.seed,
            "batch_size": cfg.train.batch_size, "workers": cfg.train.num_workers, "version": 1}
    if s.base_chains:  # only when used, so the cache keys of bases without chains stay what they were
        spec["chains"] = s.base_chains
    return spec


def _pretrain(cfg: JobConfig, url: str, tracker: Tracker) -> None:
    from ray_distill.synthetic.student import save_random_student
    from ray_distill.synthetic.tasks import base_chain_corpus, base_corpus
    from ray_distill.training.sft import train_sft

    s = cfg.student
    with tempfile.TemporaryDirectory(prefix="ray-distill-student-") as tmp:
        init = save_random_student(s.preset, tmp, seed=cfg.seed)
        if s.base_epochs == 0:
            from ray_distill.data.fs import put_dir

            put_dir(init, url)
            return
        train_cfg = cfg.train.model_copy(update={"epochs": s.base_epochs, "lr": s.base_lr})
        logger.info("pretraining base student %s on %d single-step facts and %d min(...) chains (cached afterwards)",
                    s.preset, s.base_rows, s.base_chains)
        rows = base_corpus(s.base_rows, seed=cfg.seed) + base_chain_corpus(s.base_chains, seed=cfg.seed)
        result = train_sft(rows, init, url, train_cfg,
                           storage_path=join(cfg.storage, "cache", "ray_train"), run_name=f"base-{url.rsplit('/', 1)[-1]}",
                           tracker_handle=tracker.handle(), log_model=False)
        tracker.log_metrics({f"base/{k}": v for k, v in result.metrics.items() if isinstance(v, (int, float))})
