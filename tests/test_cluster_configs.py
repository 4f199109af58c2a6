"""The cluster configs under cluster/ parse and carry what a real cluster needs: KubeRay manifests
(ray.io/v1, a head, a GPU worker group for generation and one for training, an entrypoint for the
RayJob, token auth on), the cluster-launcher YAML (cluster name, provider, head node type, node types),
and the local two-node script. Fast: parsing only, no cluster."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from ray_distill.config import load_config
from ray_distill.redact import redact, redact_text

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
YAMLS = sorted(CLUSTER.rglob("*.yaml")) + sorted(CLUSTER.rglob("*.yml"))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kuberay() -> dict[str, dict]:
    found = {}
    for path in YAMLS:
        for doc in _docs(path):
            if str(doc.get("apiVersion", "")).startswith("ray.io/"):
                found[f"{path.relative_to(ROOT)}:{doc['kind']}"] = doc
    return found


def test_every_yaml_under_cluster_parses():
    assert YAMLS, "no YAML under cluster/"
    for path in YAMLS:
        docs = _docs(path)
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_kuberay_manifests_have_head_gpu_groups_and_auth():
    manifests = _kuberay()
    assert {k.rsplit(":", 1)[1] for k in manifests} >= {"RayCluster", "RayJob"}
    for name, doc in manifests.items():
        assert doc["apiVersion"] == "ray.io/v1", name
        assert doc["metadata"]["name"], name
        spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
        assert spec["rayVersion"].startswith("2.6"), name
        head = spec["headGroupSpec"]
        assert head["template"]["spec"]["containers"][0]["image"], name
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        assert {"gen-gpu", "train-gpu"} <= set(groups), name
        for group in ("gen-gpu", "train-gpu"):
            (container,) = groups[group]["template"]["spec"]["containers"]
            gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
            assert gpus >= 1 and int(groups[group]["rayStartParams"]["num-gpus"]) == gpus, (name, group)
        _assert_token_auth(name, spec)
        if doc["kind"] == "RayJob":
            assert "ray-distill run" in doc["spec"]["entrypoint"], name
            assert doc["spec"]["shutdownAfterJobFinishes"] is True, name
            yaml.safe_load(doc["spec"]["runtimeEnvYAML"])


SECRET_WORDS = {"TOKEN", "KEY", "SECRET", "PASSWORD", "CREDENTIALS"}


def _secret_like(var: str) -> bool:
    return bool(SECRET_WORDS & set(var.upper().split("_")))  # HF_TOKEN yes, TOKENIZERS_PARALLELISM no


def test_kuberay_secrets_come_from_the_platform_never_from_the_job_spec():
    """Every Ray container reads HF_TOKEN, S3 keys, ... through secretKeyRef; no secret-looking variable has a
    literal value, none travels in the RayJob's runtime env (readable through the Jobs API), no URI in a
    manifest carries credentials, and the usage comments do not suggest `submit --env`."""
    for name, doc in _kuberay().items():
        spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
        for pod in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            for c in pod["template"]["spec"]["containers"]:
                env = {e["name"]: e for e in c["env"]}
                assert "envFrom" not in c, (name, c["name"])
                for var in ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                    ref = env[var]["valueFrom"]["secretKeyRef"]
                    assert ref["key"] == var and ref["name"] and ref["optional"] is True, (name, var)
                for var, e in env.items():
                    if _secret_like(var):
                        assert "value" not in e and "secretKeyRef" in e["valueFrom"], (name, c["name"], var)
        if doc["kind"] == "RayJob":
            job_env = (yaml.safe_load(doc["spec"]["runtimeEnvYAML"]) or {}).get("env_vars", {})
            assert not [v for v in job_env if _secret_like(v)], name
            assert redact(doc["spec"]["entrypoint"]) == doc["spec"]["entrypoint"], name
    for path in CLUSTER.joinpath("kuberay").glob("*.yaml"):
        text = path.read_text()
        assert redact_text(text) == text and "--env " not in text, path


def _assert_token_auth(name: str, spec: dict) -> None:
    """Token auth on: authOptions.mode token, or RAY_AUTH_MODE=token on every Ray container; never disabled."""
    text = yaml.safe_dump(spec)
    # RAY_AUTH_MODE=disabled / {name: RAY_AUTH_MODE, value: disabled} / authOptions: {mode: disabled}
    assert not re.search(r"(auth_mode|mode)\W+(value\W+)?disabled", text, re.I), f"{name}: something disables auth"
    if spec.get("authOptions", {}).get("mode") == "token":
        return
    pods = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    for pod in pods:
        for c in pod["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", (name, c["name"])
            assert "secretKeyRef" in env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}), (name, c["name"])


def test_cluster_launcher_yaml_has_required_fields():
    launchers = [p for p in YAMLS if "provider" in _docs(p)[0]]
    assert launchers, "no Ray cluster-launcher YAML under cluster/"
    for path in launchers:
        cfg = _docs(path)[0]
        for key in ("cluster_name", "provider", "head_node_type", "available_node_types", "max_workers"):
            assert key in cfg, (path, key)
        assert cfg["provider"]["type"] in {"aws", "gcp", "azure"} and cfg["provider"].get("region"), path
        types = cfg["available_node_types"]
        assert cfg["head_node_type"] in types, path
        for name, node in types.items():
            assert "node_config" in node and "resources" in node, (path, name)
        assert len(types) >= 3, path  # head + generation + training
        starts = " ".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
        assert starts.count("RAY_AUTH_MODE=token") == 2 and "disabled" not in starts, path


def test_local_cluster_script_is_valid_bash_with_usage():
    script = CLUSTER / "local_cluster.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "start|stop" in proc.stderr
    text = script.read_text()
    code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert "export RAY_AUTH_MODE=token" in [line.strip() for line in code]
    assert not [line for line in code if "ray stop" in line or "RAY_AUTH_MODE=disabled" in line]


@pytest.mark.parametrize("job", sorted(p.name for p in (ROOT / "jobs").glob("paper_*.yaml")))
def test_paper_jobs_validate(job):
    cfg = load_config(ROOT / "jobs" / job)
    # the paper's 16k completions plus a prompt allowance: no kept completion is cut at max_seq_len
    assert cfg.train.use_gpu and cfg.train.max_seq_len >= cfg.format.max_tokens + 1024 and cfg.eval.k == 16
    assert all(t.engine.kind == "vllm" and t.resources.num_gpus == t.engine.tensor_parallel_size
               for t in cfg.teachers)
    assert cfg.tracking.tracking_uri.startswith("http")


def _offered() -> dict[str, list[dict]]:
    """Per cluster config, the custom resources and GPUs of each GPU node type / worker group."""
    found: dict[str, list[dict]] = {}
    for path in YAMLS:
        for doc in _docs(path):
            if "available_node_types" in doc:
                found[str(path)] = [{"gpus": 8, **t["resources"]} for t in doc["available_node_types"].values()
                                    if t["node_config"].get("InstanceType", "").startswith("p5")]
            elif str(doc.get("apiVersion", "")).startswith("ray.io/"):
                spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
                found[str(path)] = [{"gpus": int(g["rayStartParams"]["num-gpus"]),
                                     **json.loads(json.loads(g["rayStartParams"]["resources"]))}
                                    for g in spec["workerGroupSpecs"]]
    return found


def test_gpu_node_types_offer_one_custom_resource_unit_per_gpu():
    for path, nodes in _offered().items():
        assert nodes, path
        for node in nodes:
            units = {k: v for k, v in node.items() if k != "gpus"}
            assert units and all(v == node["gpus"] for v in units.values()), (path, node)


@pytest.mark.parametrize("job", sorted(p.name for p in (ROOT / "jobs").glob("paper_*.yaml")))
def test_paper_jobs_request_the_node_types_resources(job):
    cfg = load_config(ROOT / "jobs" / job)
    offered = {k for nodes in _offered().values() for node in nodes for k in node if k != "gpus"}
    requests = [t.resources.custom_resources for t in cfg.teachers]
    requests += [cfg.student.serving.resources.custom_resources, cfg.train.custom_resources]
    for r in requests:
        assert r and set(r) <= offered, r
    assert all(sum(t.resources.custom_resources.values()) == t.resources.num_gpus for t in cfg.teachers)


def test_aws_nodes_get_python_311():
    text = (CLUSTER / "aws.yaml").read_text()
    assert "uv python install 3.11" in text and "scripts/install.sh" in text
