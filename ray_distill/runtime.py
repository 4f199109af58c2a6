"""Ray start-up for jobs: join a cluster when an address is given, else start a local one with the
environment vLLM's CPU build needs inside actors."""

from __future__ import annotations

import logging
import os

from ray_distill.config import ConfigError, JobConfig

logger = logging.getLogger(__name__)

# Environment every Ray worker gets (vLLM on CPU: small KV cache, no thread pinning in actors; Ray Train's
# poll interval).
WORKER_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
    "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
    "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
    "TOKENIZERS_PARALLELISM": "false",
    # Ray Train's controller polls its workers every 2 s by default, so each training launch noticed its end
    # up to 2 s late (wall minus start-up 4.2 s vs 1.8 s at 0.2 s, a 13-step launch); half a second is cheap.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5"),
}


# Settings of a local cluster only; a cluster keeps Ray's defaults.
# - One machine: nothing drains or preempts its node. Ray Train's preemption watcher is an actor per launch
#   polling the nodes' drain state (~1 s and a process per launch on 2 CPUs: 20.2 vs 19.3 s, an empty two-worker
#   launch, three each).
# - Ray kills task workers idle for 1 s while the node runs more worker processes than its soft limit (its CPUs),
#   as it does around a Ray Train launch: the next launch's Ray Data tokenization then paid a fresh interpreter and
#   transformers' import again (5.5 s before each launch's fit on 2 CPUs). Idle workers kept 5 minutes, the second
#   and later launches of a driver tokenized in 0.2 s: 20.6 -> 13.2 s a launch (benchmarks/launches.py).
LOCAL_CLUSTER_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_idle_worker_killing_time_threshold_ms": "300000"}


def init_ray(cfg: JobConfig) -> int:
    """Join the cluster at ``ray.address`` / ``RAY_ADDRESS`` (token auth from Ray's own environment:
    ``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``), or start a local one; returns the number of
    live nodes. On several nodes, a ``storage`` relative to this process's working directory is refused
    (:class:`ConfigError`): the other nodes cannot reach it."""
    import ray

    from ray_distill.environment import check_shared_storage, job_env_vars, ray_address

    redact_forwarded_logs()  # before any worker prints
    for k, v in WORKER_ENV.items():
        os.environ.setdefault(k, v)
    address, source = ray_address(cfg.ray.address, os.environ)  # a bad address is refused even when connected
    if ray.is_initialized():
        nodes = live_nodes()
        check_shared_storage(cfg.storage, cfg.storage_source, nodes)
        return nodes
    kwargs: dict = {"log_to_driver": True, "configure_logging": False}
    if address:
        # inside a Ray job: the job's env_vars win (Ray refuses the same key twice)
        job_env = job_env_vars(os.environ)
        env = {k: v for k, v in WORKER_ENV.items() if k not in job_env}
        ray.init(address=address, runtime_env={"env_vars": env}, **kwargs)
        _route_logs_again()
        nodes = live_nodes()
        logger.info("joined Ray cluster at %s (from %s, %d node(s))", address, source, nodes)
        try:
            check_shared_storage(cfg.storage, cfg.storage_source, nodes)
        except ConfigError:
            ray.shutdown()
            raise
        return nodes
    # Logical CPUs: at least one more than the training workers ask for, so a driver-side task or a
    # Tune trial can hold a slot while its Train workers run (a 2-core laptop still works).
    need = int(cfg.train.num_workers * cfg.train.cpus_per_worker) + 1
    num_cpus = cfg.ray.num_cpus or max(os.cpu_count() or 1, need)
    for k, v in LOCAL_CLUSTER_ENV.items():  # read by the raylet and Ray Train's controller when they start
        os.environ.setdefault(k, v)
    # No runtime_env: the local cluster's raylet, and so every worker, inherits this process's environment
    # (WORKER_ENV set above). A job with a runtime_env (even env_vars alone) does not get the workers Ray keeps
    # started in advance: an empty actor took 1.26 s to start vs 0.72 s without (benchmarks/worker_starts.py,
    # 2 CPUs); a job starts dozens of actors (every Ray Data actor pool, Ray Train's helpers).
    ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
    _route_logs_again()
    # Processes started by this job (Ray Train's helpers, subprocesses) join this cluster, not another
    # one that happens to run on the same machine.
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    logger.info("started a local Ray cluster with %d CPUs", num_cpus)
    return 1


def _route_logs_again() -> None:
    """``ray.init`` resets the handlers of Ray's loggers: back to the job's log file (ray_distill.console)."""
    from ray_distill.console import active

    if (log := active()) is not None:
        log.route_libraries()


def redact_forwarded_logs() -> bool:
    """Pass every worker log line Ray prints on this driver's console (``log_to_driver``: the workers' stdout
    and stderr, and the raylet's error messages about them) through
    :func:`ray_distill.redact.redact_log_batch` first: the same masking as the driver's own log records, so a
    key or a credential URI a worker prints never reaches the console or a captured job log. Ray prints those
    lines itself, past the logging module, through one function, ``ray._private.worker.print_worker_logs``
    (no public hook in Ray 2.60), which is wrapped once per process. Returns whether it was found (a warning
    otherwise: another Ray version)."""
    try:
        from ray._private import worker

        printer = worker.print_worker_logs
    except (ImportError, AttributeError) as err:
        logger.warning("worker log lines forwarded by Ray are not redacted (%s: %s)", type(err).__name__, err)
        return False
    if not getattr(printer, "redacting", False):
        worker.print_worker_logs = _redacting_printer(printer)
    return True


def _redacting_printer(print_worker_logs):
    """Ray's ``print_worker_logs(batch, file, ignore_prefix)`` with the batch's lines redacted first."""
    from ray_distill.redact import drop_cleaner_noise, redact_log_batch

    def printer(data, print_file, ignore_prefix=False):
        return print_worker_logs(redact_log_batch(drop_cleaner_noise(data)), print_file, ignore_prefix)

    printer.redacting = True
    printer.wrapped = print_worker_logs  # what it wraps (Ray's own, or a wrapper of it)
    return printer


def live_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))
