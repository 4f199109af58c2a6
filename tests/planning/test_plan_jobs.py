"""The plan over every shipped job and every cluster config it names, and the one-line refusal through the CLI.
No Ray, no network, no storage: configs only."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ray_distill.cli import app
from ray_distill.config import load_config
from ray_distill.planning.placement import load_cluster, resolve_cluster_path
from ray_distill.planning.plan import GiB, plan_job, refusal

ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))
KUBERAY = sorted((ROOT / "cluster" / "kuberay").glob("*.yaml"))


def _cluster_files(job: Path) -> list[str]:
    cfg = load_config(job)
    return [resolve_cluster_path(cfg.cluster, str(job))] if cfg.cluster else []


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.name)
def test_every_job_fits_every_cluster_it_names(job, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config(job)
    clusters = _cluster_files(job)
    if cfg.cluster:  # a job sized for the AWS cluster fits the KubeRay manifests of the same node types too
        clusters += [str(p) for p in KUBERAY]
    for path in clusters or [None]:
        plan = plan_job(cfg, load_cluster(path) if path else None)
        assert plan.fits, (path, refusal(plan))


@pytest.mark.parametrize("job", ["paper_math.yaml", "paper_code.yaml"])
def test_paper_jobs_train_within_an_h100_and_place_every_teacher(job, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config(ROOT / "jobs" / job)
    assert cfg.cluster == "cluster/aws.yaml"
    for path in [cfg.cluster, *map(str, KUBERAY)]:
        plan = plan_job(cfg, load_cluster(path))
        stages = {s.stage: s for s in plan.stages}
        train = stages["train"]
        assert train.spot.node.gpu == "H100-80GB" and train.spot.nodes == 2, path
        assert train.need <= 80 * GiB and train.need <= train.capacity, path
        assert stages["smoke-test SFT"].need <= train.capacity
        for t in cfg.teachers:
            teacher = stages[f"teacher {t.name}"]
            assert teacher.fits and teacher.spot is not None, (path, t.name)
            big = t.name in ("deepseek-r1", "qwen3-235b")
            assert teacher.spot.node.gpu == ("H200-141GB" if big else "H100-80GB"), (path, t.name)


REFUSAL = ("refused: train: 522.3 GiB per GPU > 79.6 GiB on train_gpu (8 x H100-80GB): set train.cpu_offload=true "
           "or train.num_workers>=16\n")


def test_a_32b_full_sft_on_one_gpu_is_refused_in_one_line(monkeypatch):
    """32B, fp32 master weights + AdamW on one 80 GB GPU without offload: refused by `plan` (exit 2) and by `run`
    before any compute, one line naming the stage, need, capacity and the knob."""
    monkeypatch.chdir(ROOT)
    args = ["jobs/paper_math.yaml", "train.num_workers=1", "train.grad_accum_steps=48", "smoke_test.enabled=false"]
    result = CliRunner().invoke(app, ["plan", *args])
    assert result.exit_code == 2
    assert result.stderr == REFUSAL
    ran = CliRunner().invoke(app, ["run", *args])
    assert ran.exit_code == 2
    assert ran.stderr.endswith(REFUSAL.removeprefix("refused: ").rstrip("\n")
                               + " (ray-distill plan jobs/paper_math.yaml shows every stage)\n")
    assert ran.stderr.count("\n") == 1
