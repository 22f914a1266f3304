"""The local runner executes the rendered TrainJob as Kubeflow Trainer v2 and JobSet would.

Each node is one process group running the TrainJob's command, with only the PET_* variables
the Trainer injects; a failed node makes the JobSet restart every node, up to the runtime's
``failurePolicy.maxRestarts`` (fast stand-ins, no torch). The end-to-end test trains the real
model on 2 nodes under torchrun, kills one, and ends at the same loss as an uninterrupted run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_launch_local import kill_first_run_of
from test_launch_pretrain import TINY

from lmforge.config import load_config
from lmforge.errors import LaunchError
from lmforge.launch import trainjob
from lmforge.launch.launcher import launch_pretrain
from lmforge.launch.trainjob_runner import TrainJobRunner
from lmforge.train.synthetic import write_synthetic_tokenized

# No torch, no torchrun (fast): what each node does, by node rank and incarnation.
PLANNED = """
import os, sys
out, plan = sys.argv[1], dict(a.split("=") for a in sys.argv[2:])
name = "node" + os.environ["PET_NODE_RANK"]
runs = os.path.join(out, f"runs-{name}")
n = len(open(runs).read().splitlines()) if os.path.exists(runs) else 0
open(runs, "a").write(f"{n}\\n")
sys.exit(int(plan.get(f"{name}.{n}", plan.get(name, "0"))))
"""
PET = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")


def make_job(tmp_path: Path, script: str, args: list[str], overrides=(), torchrun=True):
    root = tmp_path / "volume"
    (root / "out").mkdir(parents=True)
    script_path = tmp_path / "standin.py"
    script_path.write_text(script)
    cfg = load_config(None, ["launch.api=trainjob", *overrides])
    configmap, job = trainjob.render(cfg, root / "tok", root / "out", root=root, run_name="tj")
    program = [sys.executable, str(script_path), f"{cfg.launch.mount_path}/out", *args]
    trainer = job["spec"]["trainer"]
    trainer["command"], trainer["args"] = (
        (["torchrun"], ["--no-python", *program]) if torchrun else (program[:1], program[1:])
    )
    return cfg, root, configmap, job


def runner(cfg, root, configmap, job, lines, **kwargs):
    return TrainJobRunner(
        job,
        trainjob.render_runtime(cfg),
        volumes={cfg.launch.pvc_name: root},
        configmaps=[configmap],
        echo=lines.append,
        timeout_s=300,
        peer_timeout_s=30,
        **kwargs,
    )


def runs(root: Path, name: str) -> int:
    return len((root / "out" / f"runs-{name}").read_text().splitlines())


def test_max_restarts_ends_the_job_with_the_nodes_reason(tmp_path):
    cfg, root, configmap, job = make_job(
        tmp_path, PLANNED, ["node1=3"], ["launch.backoff_limit=2"], torchrun=False
    )
    with pytest.raises(LaunchError, match=r"ReachedMaxRestarts: node 1 exited with code 3 after 2"):
        runner(cfg, root, configmap, job, []).run()
    assert runs(root, "node0") == runs(root, "node1") == 3  # every node, every restart


def test_never_policy_fails_at_the_first_failure(tmp_path):
    cfg, root, configmap, job = make_job(
        tmp_path, PLANNED, ["node0=1"], ["launch.restart_policy=Never"], torchrun=False
    )
    assert trainjob.render_runtime(cfg)["spec"]["template"]["spec"]["failurePolicy"] == {
        "maxRestarts": 0
    }
    with pytest.raises(LaunchError, match=r"ReachedMaxRestarts: node 0 exited with code 1 after 0"):
        runner(cfg, root, configmap, job, []).run()


def test_job_completes_when_every_node_does_after_a_restart(tmp_path):
    cfg, root, configmap, job = make_job(tmp_path, PLANNED, ["node1.0=1"], torchrun=False)
    result = runner(cfg, root, configmap, job, []).run()
    assert result["restarts"] == 1 and (runs(root, "node0"), runs(root, "node1")) == (2, 2)


@pytest.mark.slow
def test_trainjob_pretrains_two_nodes_and_a_killed_node_ends_at_the_same_loss(
    tmp_path, monkeypatch, embedded_store
):
    monkeypatch.chdir(tmp_path)
    write_synthetic_tokenized(tmp_path / "outputs" / "tokenized", vocab_size=128, block_size=32)
    short = ["pretrain.max_steps=60", "pretrain.eval_every=60", "pretrain.ckpt_every=10"]
    overrides = [*TINY, *short, "launch.api=trainjob"]
    overrides.append(f"tracking.artifact_location={tmp_path / 'mlartifacts'}")
    cfg = load_config(None, overrides)
    checkpoints = tmp_path / "outputs" / "killed" / "checkpoints"

    def first_checkpoint() -> str | None:
        return max((p.name for p in checkpoints.glob("step-*")), default=None)

    def run(out: str, **options):
        lines: list[str] = []
        tokenized = Path("outputs/tokenized")
        result = launch_pretrain(cfg, tokenized, Path(out), echo=lines.append, **options)
        return result, lines

    killed: list[str] = []
    result, lines = run(
        "outputs/killed", on_start=kill_first_run_of("node-1", first_checkpoint, killed)
    )
    assert killed, "node 1 finished before the first checkpoint"
    assert result.restarts == 1 and result.backend == "local"
    assert any(line.startswith("[node-1] exited with code 137; restarting all") for line in lines)
    metrics = json.loads((tmp_path / "outputs" / "killed" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 60
    assert 10 <= int(killed[0].removeprefix("step-")) <= metrics["resumed_from"] < 60
    reference, _ = run("outputs/whole")
    assert reference.restarts == 0
    assert result.val_loss == pytest.approx(reference.val_loss, abs=1e-4)
    assert result.train_loss == pytest.approx(reference.train_loss, abs=1e-4)
