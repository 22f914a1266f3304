"""The local runner executes the rendered TrainJob as Kubeflow Trainer v2 and JobSet would.

Each node is one process group running the TrainJob's command, with only the PET_* variables
the Trainer injects; a failed node makes the JobSet restart every node, up to the runtime's
``failurePolicy.maxRestarts`` (fast stand-ins, no torch). The end-to-end test trains the real
model on 2 nodes under torchrun, kills one, and ends at the same loss as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import psutil
import pytest
from process_fixtures import RUNNER, running, signalable_child, still_running_after, wait_for
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
# A worker under real torchrun, training until it is stopped: rank 0 holds the checkpoint
# folder's writer lock and ignores SIGTERM (as one stuck in a collective does); each starts a
# helper in a session of its own, as torchrun starts the worker itself.
TRAINING = """
import os, signal, subprocess, sys, time
from pathlib import Path
from lmforge.outputs import owner_lock
out, mode, rank = Path(sys.argv[1]), sys.argv[2], int(os.environ["RANK"])
lock = out / "checkpoints" / ".writer.lock"
with owner_lock(lock, "checkpoint folder") if rank == 0 else open(os.devnull):
    if mode == "train":
        if rank == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                         start_new_session=True)
        (out / f"training-{rank}").write_text(str(os.getpid()))
        time.sleep(600)
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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_runner_ends_every_process_it_started_and_frees_the_lock(tmp_path, sig):
    """Ctrl-C or SIGTERM to the runner while 2 nodes train under torchrun: within 10 s no
    torchrun, worker (in its own session) or helper of theirs is left, nor the runner's
    scratch folder, and the next run takes the checkpoint folder's lock."""
    cfg, root, configmap, job = make_job(tmp_path, TRAINING, ["train"])
    (root / "out" / "checkpoints").mkdir()
    spec = tmp_path / "spec.json"
    runtime = trainjob.render_runtime(cfg)
    d = {"job": job, "runtime": runtime, "configmap": configmap, "root": str(root)}
    spec.write_text(json.dumps(d | {"pvc": cfg.launch.pvc_name}))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    launcher = signalable_child(RUNNER, [str(spec)], {**os.environ, "TMPDIR": str(scratch)})
    started: list[psutil.Process] = []
    try:
        for rank in (0, 1):
            wait_for(root / "out" / f"training-{rank}", launcher)
        started = psutil.Process(launcher.pid).children(recursive=True)
        # 2 torchruns, their 2 workers, and a helper each
        assert len([p for p in started if "time.sleep(600)" in " ".join(p.cmdline())]) == 2
        assert len(started) >= 6
        launcher.send_signal(sig)
        assert still_running_after(started, 10) == []
        launcher.wait(5)
    finally:
        for p in [launcher, *running(started)]:  # whatever a failure leaves
            p.kill()
    assert list(scratch.iterdir()) == []  # the ConfigMap's folder, removed
    job["spec"]["trainer"]["args"][-1] = "finish"  # take the lock, and end
    result = runner(cfg, root, configmap, job, []).run()
    assert result["restarts"] == 0
    assert not (root / "out" / "checkpoints" / ".writer.lock").exists()


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
