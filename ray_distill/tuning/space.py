"""The data-budget search space (pure): Tune's param space, ASHA rungs, teacher mixes, trial configs.

    rungs(max_epochs=8, grace_period=1, reduction_factor=2)   # [1, 2, 4, 8]
    teacher_names("concise+verbose", ["concise", "verbose"])  # ["concise", "verbose"]
    cfg = trial_config(job_tree, {"selection.keep_per_question": 2, "teacher": "concise"})

Search-space keys are dotted config keys (``selection.max_questions``, ``selection.keep_per_question``
(P), ``selection.samples_per_question`` (M), ``compression.max_pass_rate`` / ``min_pass_rate`` (the
band), ...) plus ``teacher``: one job teacher, or a mix of several joined by ``+``.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from ray_distill import columns as C
from ray_distill.config import ConfigError, JobConfig, TuneConfig, apply_override, config_from_dict
from ray_distill.curation.compression import compress

TEACHER = "teacher"  # the search-space key that picks the teacher (or mix)
MIX = "+"


def param_space(tune_cfg: TuneConfig) -> dict:
    """Tune's ``param_space``: grid search over every combination, or categorical choices for Optuna."""
    from ray import tune

    wrap = tune.grid_search if tune_cfg.search == "grid" else tune.choice
    return {key: wrap(list(choices)) for key, choices in tune_cfg.search_space.items()}


def rungs(max_epochs: int, grace_period: int, reduction_factor: int) -> list[int]:
    """Epochs after which a trial is evaluated and reported: ASHA's milestones
    ``grace_period * reduction_factor**i`` below ``max_epochs``, then ``max_epochs``."""
    out, epochs = [], grace_period
    while epochs < max_epochs:
        out.append(epochs)
        epochs *= reduction_factor
    return [*out, max_epochs]


def teacher_names(choice: str | None, teachers: list[str]) -> list[str]:
    """The teachers of a ``teacher`` choice (``"a"`` or a mix ``"a+b"``); the job's first by default."""
    if choice is None:
        return teachers[:1]
    names = [n.strip() for n in str(choice).split(MIX)]
    unknown = [n for n in names if n not in teachers]
    if unknown or len(set(names)) != len(names):
        raise ConfigError(f"tune.search_space.teacher: {choice!r} must name job teachers {teachers} (mix: 'a+b')")
    return names


def check_space(cfg: JobConfig) -> None:
    """Fail fast on a search space that no trial could run (unknown teachers, empty choices) or that
    would move the yardstick (``dev.*``: every trial is scored on the same dev suite)."""
    teachers = [t.name for t in cfg.teachers]
    for key, choices in cfg.tune.search_space.items():
        if not choices:
            raise ConfigError(f"tune.search_space.{key}: needs at least one choice")
        if key.split(".")[0] == "dev":
            raise ConfigError(f"tune.search_space.{key}: the dev suite scores every trial; it cannot be searched")
        if key == TEACHER:
            for choice in choices:
                teacher_names(choice, teachers)


def trial_config(job: dict, params: dict[str, Any]) -> JobConfig:
    """The job tree with a trial's choices applied (``teacher`` is not a config key), validated."""
    tree = copy.deepcopy(job)
    for key, value in params.items():
        if key != TEACHER:
            apply_override(tree, key.split("."), value)
    return config_from_dict(tree, source=f"tune trial {params}")


def trial_name(params: dict[str, Any], trial_id: str) -> str:
    """``trial-<id>-max_questions=30-teacher=concise`` (short keys, stable order)."""
    parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in sorted(params.items())]
    return "-".join(["trial", trial_id, *parts])


def choices(cfg: JobConfig, key: str) -> list:
    """The values ``key`` takes over the search (its choices, or the job's value)."""
    if key in cfg.tune.search_space:
        return list(cfg.tune.search_space[key])
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return [node]


def candidate_questions(cfg: JobConfig, pool: list[dict], rates) -> list[dict]:
    """The pool questions some trial may keep: the union of ``compress`` over every band choice of
    the search (impossible bands are skipped here; their trials fail and are recorded)."""
    if not all(choices(cfg, "compression.enabled")):
        return pool
    keep: set[str] = set()
    combos = itertools.product(*(choices(cfg, f"compression.{k}") for k in
                                 ("max_pass_rate", "min_pass_rate", "replay_fraction")))
    for high, low, replay in combos:
        if low is not None and low > high:
            continue
        kept, _ = compress(pool, rates, high, low, replay, seed=cfg.seed)
        keep |= {str(q[C.QUESTION_ID]) for q in kept}
    return [q for q in pool if str(q[C.QUESTION_ID]) in keep]


def best_job_tree(cfg: JobConfig, best: dict[str, Any]) -> dict:
    """The job that runs the best configuration at full scale: its choices applied, its teacher as
    the only candidate (no smoke test: the search already chose), no ``tune`` section. The pipeline
    distils from one teacher: for a mix, the mix's teachers stay candidates of the smoke test."""
    tree = cfg.model_dump(mode="json")
    for key, value in best.items():
        if key != TEACHER:
            apply_override(tree, key.split("."), value)
    if TEACHER in best:
        names = teacher_names(best[TEACHER], [t.name for t in cfg.teachers])
        tree["teachers"] = [t for t in tree["teachers"] if t["name"] in names]
        tree["smoke_test"]["enabled"] = len(names) > 1
    tree.pop("tune", None)
    return tree
