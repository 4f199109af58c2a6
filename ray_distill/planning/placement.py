"""Node types of a cluster config and where a stage lands on them.

    cluster = load_cluster("cluster/aws.yaml")        # or a KubeRay RayCluster / RayJob manifest
    spot = place(cluster, gpus_per_unit=4, units=4, resources={"generation": 4})
    spot.node.name, spot.nodes                        # "gen_gpu", 2

- Ray cluster launcher (``provider:``): each ``available_node_types`` entry; GPUs and memory from its
  ``InstanceType`` (:data:`INSTANCES`), custom resources from ``resources``.
- KubeRay (``apiVersion: ray.io/...``): each worker group; GPUs from the container's ``nvidia.com/gpu`` limit,
  the GPU model from the pod's ``nodeSelector`` ``nvidia.com/gpu.product`` (:data:`GPU_PRODUCTS`), custom
  resources from ``rayStartParams.resources``, host memory from the container's memory limit.

A unit (an engine actor, a training worker) fits a node type when the node has its GPUs and offers every custom
resource it requests; units per node are limited by both. Memory is the caller's to compare.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field

import yaml

from ray_distill.config import ConfigError

MiB = 1 << 20
GiB = 1 << 30
# GPU memory as nvidia-smi reports it (MiB).
GPUS = {"H100-80GB": 81559, "H200-141GB": 143771, "A100-80GB": 81920, "A100-40GB": 40960, "L40S-48GB": 46068}
# AWS instance type -> (GPUs, GPU model, host memory GiB)
INSTANCES = {
    "p5.48xlarge": (8, "H100-80GB", 2048),
    "p5e.48xlarge": (8, "H200-141GB", 2048),
    "p5en.48xlarge": (8, "H200-141GB", 2048),
    "p4de.24xlarge": (8, "A100-80GB", 1152),
    "p4d.24xlarge": (8, "A100-40GB", 1152),
    "g6e.48xlarge": (8, "L40S-48GB", 1536),
}
# nvidia.com/gpu.product label (GPU feature discovery) -> GPU model
GPU_PRODUCTS = {"NVIDIA-H100-80GB-HBM3": "H100-80GB", "NVIDIA-H200": "H200-141GB",
                "NVIDIA-A100-SXM4-80GB": "A100-80GB", "NVIDIA-A100-SXM4-40GB": "A100-40GB", "NVIDIA-L40S": "L40S-48GB"}
PRODUCT_LABEL = "nvidia.com/gpu.product"


@dataclass(frozen=True)
class NodeType:
    name: str
    gpus: int
    gpu: str  # GPU model, a key of GPUS ("" without GPUs)
    host_bytes: int
    max_workers: int
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def gpu_bytes(self) -> int:
        return GPUS[self.gpu] * MiB if self.gpu else 0

    def describe(self) -> str:
        return f"{self.name} ({self.gpus} x {self.gpu})" if self.gpus else f"{self.name} (no GPU)"


@dataclass(frozen=True)
class Cluster:
    source: str
    node_types: list[NodeType]


@dataclass(frozen=True)
class Spot:
    node: NodeType
    per_node: int  # units on one node
    nodes: int  # nodes the stage needs


def load_cluster(path: str) -> Cluster:
    """Node types of a cluster-launcher YAML or a KubeRay manifest (first RayCluster/RayJob document)."""
    try:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cluster {path}: cannot read it ({err})") from None
    for doc in docs:
        if "available_node_types" in doc:
            return Cluster(path, [_launcher_node(path, n, t) for n, t in doc["available_node_types"].items()])
        if str(doc.get("apiVersion", "")).startswith("ray.io/"):
            spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
            return Cluster(path, [_kuberay_group(path, g) for g in spec.get("workerGroupSpecs", [])])
    raise ConfigError(f"cluster {path}: neither a Ray cluster-launcher YAML nor a KubeRay RayCluster/RayJob")


def _launcher_node(path: str, name: str, node: dict) -> NodeType:
    instance = node.get("node_config", {}).get("InstanceType", "")
    resources = {k: float(v) for k, v in (node.get("resources") or {}).items() if k not in ("CPU", "GPU", "memory")}
    if instance in INSTANCES:
        gpus, gpu, host = INSTANCES[instance]
    elif int((node.get("resources") or {}).get("GPU", 0)) == 0:
        gpus, gpu, host = 0, "", 0
    else:
        raise ConfigError(f"cluster {path}: node type {name}: instance type {instance!r} is not known to the plan "
                          f"(known: {', '.join(INSTANCES)})")
    return NodeType(name, gpus, gpu, host * GiB, int(node.get("max_workers", 0)), resources)


def _kuberay_group(path: str, group: dict) -> NodeType:
    name = group["groupName"]
    pod = group["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c.get("name", "").startswith("ray")] or pod["containers"][:1]
    limits = container.get("resources", {}).get("limits", {})
    gpus = int(limits.get("nvidia.com/gpu", 0))
    gpu = ""
    if gpus:
        product = (pod.get("nodeSelector") or {}).get(PRODUCT_LABEL)
        if product not in GPU_PRODUCTS:
            raise ConfigError(f"cluster {path}: worker group {name}: set nodeSelector {PRODUCT_LABEL} to one of "
                              f"{', '.join(GPU_PRODUCTS)} so the plan knows its GPU memory (got {product!r})")
        gpu = GPU_PRODUCTS[product]
    return NodeType(name, gpus, gpu, _k8s_bytes(str(limits.get("memory", "0"))),
                    int(group.get("maxReplicas", group.get("replicas", 0))),
                    _ray_start_resources(group.get("rayStartParams", {}).get("resources")))


def _ray_start_resources(text: str | None) -> dict[str, float]:
    """``rayStartParams.resources``: a JSON object, usually quoted once more for the shell."""
    if not text:
        return {}
    text = text.strip()
    if text.startswith('"') and text.endswith('"'):
        text = json.loads(text)
    return {k: float(v) for k, v in json.loads(text).items()}


def _k8s_bytes(quantity: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTP]i?)?", quantity.strip())
    if not m:
        return 0
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50,
             "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
    return int(float(m.group(1)) * units.get(m.group(2) or "", 1))


def units_per_node(node: NodeType, gpus_per_unit: float, resources: dict[str, float]) -> int:
    """How many units (actors / workers) one node of ``node`` takes (0: it cannot take one)."""
    if any(node.resources.get(k, 0.0) < v for k, v in resources.items() if v > 0):
        return 0
    counts = [int(node.resources[k] // v) for k, v in resources.items() if v > 0]
    if gpus_per_unit > 0:
        counts.append(int(node.gpus // gpus_per_unit))
    return min(counts) if counts else 1


def candidates(cluster: Cluster, gpus_per_unit: float, units: int, resources: dict[str, float]) -> list[Spot]:
    """Every node type a stage of ``units`` units could land on, with the nodes it would take."""
    spots = []
    for node in cluster.node_types:
        per = units_per_node(node, gpus_per_unit, resources)
        if per > 0:
            spots.append(Spot(node, per, math.ceil(units / per)))
    return spots


def resolve_cluster_path(path: str, job_file: str | None = None) -> str:
    """A job's ``cluster:`` path: as given when it exists (absolute or from the working directory), else beside
    the job file or in its parent folder (``jobs/x.yaml`` naming ``cluster/aws.yaml``)."""
    if os.path.isabs(path) or os.path.exists(path) or not job_file or "://" in job_file:
        return path
    here = os.path.dirname(os.path.abspath(job_file))
    for base in (here, os.path.dirname(here)):
        if os.path.exists(os.path.join(base, path)):
            return os.path.join(base, path)
    return path
