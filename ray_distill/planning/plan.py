"""What a job needs per stage and per GPU against the node types of its cluster, from the config alone.

    plan = plan_job(cfg, cluster)      # cluster: placement.load_cluster(path) or None (needs only)
    refusal(plan)                      # None, or "train: 131.2 GiB per GPU > 79.6 GiB on train_gpu (...): set ..."

Stages: every vLLM engine (each teacher, the student's serving engine, a vLLM judge), the smoke test's SFT
(the train recipe with ``smoke_test``'s batch size), the SFT and the export. Each lands on the first node type
that offers what its actors/workers request (GPUs and ``custom_resources``) and holds it; a stage that no node
type holds is refused in one line naming the stage, the need, the capacity and the knobs that would fix it.
No network, no storage: architectures come from :mod:`ray_distill.planning.shapes`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ray_distill.config import JobConfig, TrainConfig
from ray_distill.planning.memory import (
    MAX_NUM_SEQS,
    TrainKnobs,
    engine_memory,
    export_host_bytes,
    export_memory,
    train_host_memory,
    train_memory,
)
from ray_distill.planning.placement import Cluster, NodeType, Spot, candidates
from ray_distill.planning.shapes import Shape, model_shape

GiB = 1 << 30
ENGINE = "engine"
TRAIN = "train"
EXPORT = "export"


@dataclass
class StagePlan:
    stage: str
    model: str
    kind: str  # ENGINE, TRAIN or EXPORT
    gpus_per_unit: float
    units: int
    need: int  # bytes per GPU
    components: dict[str, int]
    capacity: int | None = None  # bytes per GPU on the chosen node type (engines: gpu_memory_utilization of it)
    spot: Spot | None = None
    host_need: int = 0  # bytes per node of host memory the stage needs beyond the usual
    fits: bool = True
    refusal: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def on_gpu(self) -> bool:
        return self.gpus_per_unit > 0


@dataclass
class Plan:
    job: str
    cluster: str | None
    stages: list[StagePlan]

    @property
    def fits(self) -> bool:
        return all(s.fits for s in self.stages)


def train_knobs(t: TrainConfig, batch_size: int | None = None) -> TrainKnobs:
    """The memory-relevant settings of a train recipe (``batch_size``: the smoke test's own)."""
    names = {f.name for f in dataclasses.fields(TrainKnobs)}
    values = {n: getattr(t, n) for n in names if n in type(t).model_fields}
    if batch_size is not None:
        values["batch_size"] = batch_size
    return TrainKnobs(**values)


def plan_job(cfg: JobConfig, cluster: Cluster | None) -> Plan:
    """Every stage of ``cfg`` sized and placed on ``cluster`` (None: sizes only, nothing refused)."""
    stages = [engine_stage(f"teacher {t.name}", t.engine, t.resources, cluster) for t in cfg.teachers
              if t.engine.kind == "vllm"]
    judge = cfg.verify.judge
    if judge.mode != "off" and judge.engine is not None and judge.engine.kind == "vllm":
        stages.append(engine_stage(f"judge {judge.name}", judge.engine, judge.resources, cluster))
    student_ref = cfg.student.model or cfg.student.preset
    serving = cfg.student.serving
    from ray_distill.config import EngineConfig

    student_engine = EngineConfig(kind="vllm", model=student_ref, tensor_parallel_size=serving.tensor_parallel_size,
                                  max_model_len=serving.max_model_len)
    stages.append(engine_stage("student (vLLM)", student_engine, serving.resources, cluster))
    shape = model_shape(student_ref)
    if cfg.smoke_test.enabled and len(cfg.teachers) > 1:
        stages.append(train_stage("smoke-test SFT", shape, cfg.train, cluster, cfg.smoke_test.batch_size))
    stages.append(train_stage("train", shape, cfg.train, cluster))
    stages.append(export_stage(shape, cfg.train, cluster))
    return Plan(cfg.name, cluster.source if cluster else None, stages)


def engine_stage(name: str, engine, res, cluster: Cluster | None) -> StagePlan:
    shape = model_shape(engine.preset or engine.model)
    tp = engine.tensor_parallel_size
    max_len = engine.max_model_len or shape.max_position
    wanted = min(MAX_NUM_SEQS, res.batch_size * max(1, engine.max_concurrent_batches))
    stage = StagePlan(name, shape.name, ENGINE, res.num_gpus, res.num_actors, 0, {})

    def sized(gpu_bytes: int):
        mem = engine_memory(shape, tp, engine.dtype, max_len, gpu_bytes, wanted)
        return mem, {"weights / TP": mem.weights, "KV, one sequence": mem.kv_per_sequence, "vLLM working": mem.overhead}

    mem, stage.components = sized(0)
    stage.need = mem.need
    if not stage.on_gpu or cluster is None:
        return stage
    fix = (f"use a node type with larger GPUs (request its custom resources in {_res_key(name)}), a higher "
           f"tensor_parallel_size, or a smaller max_model_len")
    spot = _choose(stage, cluster, dict(res.custom_resources), lambda n: sized(n.gpu_bytes)[0].need,
                   lambda n: sized(n.gpu_bytes)[0].budget, fix, "resources.num_actors")
    if spot is not None:
        mem, _ = sized(spot.node.gpu_bytes)
        stage.notes.append(f"KV room for {mem.room_sequences} of {mem.wanted_sequences} concurrent "
                           f"{max_len}-token sequences")
    if not res.custom_resources:
        stage.notes.append(f"requests no custom resources: may land on any GPU node ({_res_key(name)}.custom_resources)")
    return stage


def train_stage(name: str, shape: Shape, t: TrainConfig, cluster: Cluster | None,
                batch_size: int | None = None) -> StagePlan:
    knobs = train_knobs(t, batch_size)
    parts = train_memory(shape, knobs)
    stage = StagePlan(name, shape.name, TRAIN, 1 if t.use_gpu else 0, t.num_workers, sum(parts.values()), parts)
    stage.notes.append(f"{knobs.micro_examples} x {knobs.max_seq_len} tokens per micro-step")
    if not stage.on_gpu or cluster is None:
        return stage
    custom = dict(t.custom_resources)
    spot = _choose(stage, cluster, custom, lambda n: stage.need, lambda n: n.gpu_bytes,
                   _train_fixes(shape, knobs, cluster, custom), "train.num_workers")
    if spot is not None and knobs.cpu_offload:
        stage.host_need = train_host_memory(shape, knobs, min(spot.per_node, t.num_workers))
        _check_host(stage, spot.node, "the offloaded sharded state of its workers", "train.num_workers (more nodes)")
    if not custom:
        stage.notes.append("requests no custom resources: workers may land on any GPU node (train.custom_resources)")
    return stage


def export_stage(shape: Shape, t: TrainConfig, cluster: Cluster | None) -> StagePlan:
    knobs = train_knobs(t)
    parts = export_memory(shape, knobs)
    stage = StagePlan(EXPORT, shape.name, EXPORT, 1 if t.use_gpu else 0, t.num_workers, sum(parts.values()), parts)
    stage.host_need = export_host_bytes(shape, shape.dtype)
    stage.notes.append(f"rank 0 gathers {stage.host_need / GiB:.1f} GiB ({shape.dtype}) in host memory")
    if not stage.on_gpu or cluster is None:
        return stage
    custom = dict(t.custom_resources)
    spot = _choose(stage, cluster, custom, lambda n: stage.need, lambda n: n.gpu_bytes,
                   "set train.num_workers higher (smaller shards)", "train.num_workers")
    if spot is not None:
        _check_host(stage, spot.node, "rank 0's full state dict", "a node type with more host memory")
    return stage


def _choose(stage: StagePlan, cluster: Cluster, custom: dict[str, float], need_on, capacity_on, fix: str,
            units_knob: str) -> Spot | None:
    """The first node type that takes the stage's units and holds its per-GPU need; else a refusal."""
    spots = [s for s in candidates(cluster, stage.gpus_per_unit, stage.units, custom) if s.node.gpus > 0]
    if not spots:
        asked = f"{stage.gpus_per_unit:g} GPUs" + (f" and {custom}" if custom else "")
        stage.fits = False
        stage.refusal = (f"{stage.stage}: no node type of {cluster.source} offers {asked} per "
                         f"{'actor' if stage.kind == ENGINE else 'worker'}; fix the custom resources or the node types")
        return None
    for spot in spots:
        if need_on(spot.node) <= capacity_on(spot.node) and (spot.node.max_workers == 0
                                                            or spot.nodes <= spot.node.max_workers):
            stage.spot, stage.need, stage.capacity = spot, need_on(spot.node), capacity_on(spot.node)
            return spot
    best = max(spots, key=lambda s: capacity_on(s.node) - need_on(s.node))
    stage.spot, stage.need, stage.capacity, stage.fits = best, need_on(best.node), capacity_on(best.node), False
    if stage.need <= stage.capacity:
        stage.refusal = (f"{stage.stage}: needs {best.nodes} {best.node.name} nodes, the cluster allows "
                         f"{best.node.max_workers}: lower {units_knob} or raise max_workers of {best.node.name}")
    else:
        stage.refusal = (f"{stage.stage}: {stage.need / GiB:.1f} GiB per GPU > {stage.capacity / GiB:.1f} GiB on "
                         f"{best.node.describe()}: {fix}")
    return None


def _check_host(stage: StagePlan, node: NodeType, what: str, fix: str) -> None:
    if node.host_bytes and stage.host_need > node.host_bytes:
        stage.fits = False
        stage.refusal = (f"{stage.stage}: {stage.host_need / GiB:.1f} GiB of host memory ({what}) > "
                         f"{node.host_bytes / GiB:.1f} GiB on {node.describe()}: {fix}")


def _train_fixes(shape: Shape, k: TrainKnobs, cluster: Cluster, custom: dict[str, float]) -> str:
    """The single knobs that would make the SFT fit its node type (or all of them, to combine)."""
    spots = [s for s in candidates(cluster, 1, k.num_workers, custom) if s.node.gpus > 0]
    capacity = max((s.node.gpu_bytes for s in spots), default=0)
    per_node = max((s.per_node for s in spots), default=8)
    most = max((s.per_node * (s.node.max_workers or 1) for s in spots), default=per_node)

    def fits(**change) -> bool:
        return sum(train_memory(shape, dataclasses.replace(k, **change)).values()) <= capacity

    options: list[tuple[str, dict]] = []
    if not k.cpu_offload:
        options.append(("train.cpu_offload=true", {"cpu_offload": True}))
    if k.param_dtype != "bf16" and k.precision == "bf16":
        options.append(("train.param_dtype=bf16", {"param_dtype": "bf16"}))
    if not k.reduce_every_micro_step:
        options.append(("train.reduce_every_micro_step=true", {"reduce_every_micro_step": True}))
    if not k.gradient_checkpointing:
        options.append(("train.gradient_checkpointing=true", {"gradient_checkpointing": True}))
    one = math.ceil(k.batch_size / k.num_workers)
    if k.micro_examples > 1:
        options.append((f"train.grad_accum_steps={one}", {"grad_accum_steps": one}))
    if k.strategy == "fsdp":
        for n in range(per_node, most + 1, per_node):  # whole nodes; accumulation lowered to keep batch_size
            change = {"num_workers": n, "shard_size": None, "grad_accum_steps": max(1, min(k.grad_accum_steps,
                                                                                         k.batch_size // n))}
            if n > k.num_workers and k.batch_size >= n and fits(**change):
                options.append((f"train.num_workers>={n}", change))
                break
    elif k.num_workers > 1 or most > 1:
        options.append(("train.strategy=fsdp", {"strategy": "fsdp"}))
    alone = [name for name, change in options if fits(**change)]
    if alone:
        return "set " + _either(alone)
    return "set " + " and ".join(name for name, _ in options) + " together (no one of them is enough)"


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _res_key(stage: str) -> str:
    if stage.startswith("teacher "):
        return "teachers.*.resources"
    if stage.startswith("judge "):
        return "verify.judge.resources"
    return "student.serving.resources"


def refusal(plan: Plan) -> str | None:
    """The first stage's one-line refusal, or None when everything fits."""
    return next((s.refusal for s in plan.stages if not s.fits), None)
