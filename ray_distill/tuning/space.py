"""The data-budget search space (pure): Tune's param space, ASHA rungs, teacher mixes, trial configs.

    rungs(max_epochs=8, grace_period=1, reduction_factor=2)   # [1, 2, 4, 8]
    teacher_names("concise+verbose", ["concise", "verbose"])  # ["concise", "verbose"]
    cfg = trial_config(job_tree, {"selection.keep_per_question": 2, "teacher": "concise"})

Search-space keys are dotted config keys (``selection.max_questions``, ``selection.keep_per_question``
(P), ``selection.samples_per_question`` (M), ``compression.max_pass_rate`` / ``min_pass_rate`` (the
band), ...) plus ``teacher``: one job teacher, or a mix of several joined by ``+``.

Every searchable key changes what a trial does (the search searches what its config says):

- ``selection.*``, the band, ``compression.enabled`` and ``train.*`` are applied by the trial itself;
  ``selection.adaptive.*`` too: the trial replays the job's adaptive rounds over the stored samples;
- ``compression.k`` / ``temperature`` / ``max_tokens`` (:data:`RATE_KEYS`): the driver computes the
  student's pass rates once per combination of their values (student tokens, no teacher token);
- ``format.*`` and ``verify.*`` (the judge): the driver grades the stored samples once per combination
  (verdicts, no new teacher sample).

:data:`FIXED` lists what a trial cannot vary, and why; :func:`check_space` refuses it with one line
naming the key (``teachers.*`` would need a new generation per trial: search ``teacher`` instead), and
refuses a teacher mix (a job distils from one teacher: no job could rebuild a mix's corpus).

Search = job: :func:`trial_job` is the job a trial runs (its choices applied, its one teacher, no smoke
test, M as the per-question token cap lowers it, the learning-rate schedule pinned) and
:func:`best_job_tree` writes that job out for the best trial, so ``ray-distill curate best_job.yaml``
rebuilds the corpus the trial trained on (same ``corpus_sha256``).
"""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

from ray_distill import columns as C
from ray_distill.config import ConfigError, JobConfig, TuneConfig, apply_override, config_from_dict
from ray_distill.curation.compression import compress

TEACHER = "teacher"  # the search-space key that picks the teacher (or mix)
MIX = "+"
RATE_KEYS = ("compression.k", "compression.temperature", "compression.max_tokens")  # the pass rates' inputs
VERDICT_PREFIXES = ("format.", "verify.")  # the grader's and the judge's settings: the verdicts' inputs
# Search-space keys (or key prefixes) that no trial can vary, and why: check_space refuses them.
FIXED = {
    "teachers": "teacher samples are read from the generation store under the job's teacher settings; another "
                "value needs a new generation per trial (search 'teacher' over the job's teachers instead)",
    "compression.order": "the order only changes which questions the teacher samples before compression, not the "
                         "corpus a trial curates from stored samples: every trial would be the same",
    "questions": "the question pool is loaded once for the whole search",
    "student": "the base student is prepared once for the whole search",
    "smoke_test": "the search does not run the smoke test",
    "budget": "trials curate stored samples and spend no teacher token (search selection.samples_per_question)",
    "dev": "the dev suite scores every trial",
    "eval": "every trial is scored with the job's evaluation settings (the yardstick stays put)",
    "seed": "the job seed draws the student's pass rates once for the search (search selection.seed or train.seed)",
    **{k: "it is not a property of a trial" for k in ("name", "storage", "ray", "tracking", "tune", "ablation")},
}


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


def fixed_reason(key: str) -> str | None:
    """Why no trial can vary ``key`` (:data:`FIXED`, longest matching prefix), or None."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in FIXED:
            return FIXED[".".join(parts[:n])]
    return None


def check_space(cfg: JobConfig, metrics: tuple[str, ...] = ()) -> None:
    """Fail fast on a search space that no trial could run (unknown keys or teachers, empty choices),
    that a trial could not vary (:data:`FIXED`: identical trials), or that would move the yardstick
    (``dev.*``, ``eval.*``); and on a ``tune.metric`` that trials do not report (``metrics``, when given)."""
    teachers = [t.name for t in cfg.teachers]
    if metrics and cfg.tune.metric not in metrics:
        raise ConfigError(f"tune.metric: {cfg.tune.metric!r} is not a trial metric; one of {list(metrics)}")
    tree = cfg.model_dump(mode="json")
    for key, choices in cfg.tune.search_space.items():
        if not choices:
            raise ConfigError(f"tune.search_space.{key}: needs at least one choice")
        if key == TEACHER:
            for choice in choices:
                if len(teacher_names(choice, teachers)) > 1:
                    raise ConfigError(f"tune.search_space.teacher: {choice!r} cannot be searched: a job distils from "
                                      "one teacher, so no best_job.yaml could rebuild a mix's corpus (search the "
                                      "teachers one by one)")
            continue
        reason = fixed_reason(key)
        if reason:
            raise ConfigError(f"tune.search_space.{key}: cannot be searched: {reason}")
        if not _exists(tree, key.split(".")):
            raise ConfigError(f"tune.search_space.{key}: no such config key")


def _exists(tree: Any, path: list[str]) -> bool:
    for part in path:
        if isinstance(tree, dict) and part in tree:
            tree = tree[part]
        elif isinstance(tree, list) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        else:
            return False
    return True


def group_keys(cfg: JobConfig, group: str) -> list[str]:
    """The searched keys of a group whose values the driver prepares inputs for: ``"rates"``
    (:data:`RATE_KEYS`) or ``"verdicts"`` (``format.*``, ``verify.*``), sorted."""
    if group == "rates":
        return sorted(k for k in cfg.tune.search_space if k in RATE_KEYS)
    if group == "verdicts":
        return sorted(k for k in cfg.tune.search_space if k.startswith(VERDICT_PREFIXES))
    raise ValueError(f"unknown input group {group!r}")


def variants(cfg: JobConfig, group: str) -> list[dict[str, Any]]:
    """Every combination of the group's searched values (``[{}]`` when none is searched): the driver
    prepares one set of inputs (pass rates, verdicts) per combination."""
    keys = group_keys(cfg, group)
    return [dict(zip(keys, values)) for values in itertools.product(*(cfg.tune.search_space[k] for k in keys))]


def variant_id(params: dict[str, Any], keys: list[str]) -> str:
    """The id of the inputs a trial with ``params`` uses (its values of the group's ``keys``)."""
    return json.dumps({k: params[k] for k in keys}, sort_keys=True, default=str)


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
    the search and every pass-rate table (``rates``: one table, or ``{variant id: table}``; impossible
    bands are skipped here; their trials fail and are recorded)."""
    if not all(choices(cfg, "compression.enabled")):
        return pool
    tables = list(rates.values()) if isinstance(rates, dict) else [rates]
    keep: set[str] = set()
    combos = itertools.product(tables, *(choices(cfg, f"compression.{k}") for k in
                                         ("max_pass_rate", "min_pass_rate", "replay_fraction")))
    for table, high, low, replay in combos:
        if low is not None and low > high:
            continue
        kept, _ = compress(pool, table, high, low, replay, seed=cfg.seed)
        keep |= {str(q[C.QUESTION_ID]) for q in kept}
    return [q for q in pool if str(q[C.QUESTION_ID]) in keep]


def trial_teacher(cfg: JobConfig, params: dict[str, Any]) -> str:
    """The one teacher a trial distils from: its ``teacher`` choice, else the job's first (a search without
    a ``teacher`` key does not run the smoke test; its best job pins that teacher too)."""
    (name,) = teacher_names(params.get(TEACHER), [t.name for t in cfg.teachers])
    return name


def needs_probe_length(cfg: JobConfig) -> bool:
    """Whether some trial's M depends on its teacher's probe length: a per-question token cap with fixed M."""
    return cfg.budget.max_teacher_tokens_per_question is not None and not all(
        choices(cfg, "selection.adaptive.enabled"))


def max_epochs(cfg: JobConfig) -> int:
    """The most epochs any trial trains (``train.epochs`` may be searched): ASHA's ``max_t``."""
    return max(int(e) for e in choices(cfg, "train.epochs"))


def trial_job(job: dict, params: dict[str, Any], probe_lengths: dict[str, float | None] | None = None) -> JobConfig:
    """The job a trial runs, and the one its ``best_job.yaml`` holds (less ``tune``): the trial's choices
    applied; its teacher (:func:`trial_teacher`) as the only one and no smoke test (the trial chose it);
    with fixed M, M as the per-question token cap lowers it (``accounting.fixed_samples`` on the teacher's
    mean probe length, ``probe_lengths``: as the job computes it); the learning-rate schedule pinned to
    what the trial trains (``train.schedule_epochs``, default ``train.epochs``)."""
    from ray_distill.accounting import fixed_samples

    cfg = trial_config(job, params)
    tree = cfg.model_dump(mode="json")
    name = trial_teacher(cfg, params)
    tree["teachers"] = [t for t in tree["teachers"] if t["name"] == name]
    tree["smoke_test"]["enabled"] = False
    if not cfg.selection.adaptive.enabled:
        tree["selection"]["samples_per_question"] = fixed_samples(cfg, (probe_lengths or {}).get(name))
    tree["train"]["schedule_epochs"] = cfg.train.schedule_epochs or cfg.train.epochs
    return config_from_dict(tree, source=f"tune trial {params}")


def best_job_tree(cfg: JobConfig, best: dict[str, Any], probe_lengths: dict[str, float | None] | None = None) -> dict:
    """The job that rebuilds the best trial's corpus and trains as it did (:func:`trial_job`), without
    the ``tune`` section; it keeps the search's dev and eval suites."""
    tree = trial_job(cfg.model_dump(mode="json"), best, probe_lengths).model_dump(mode="json")
    tree.pop("tune", None)
    return tree
