"""End to end: `launch_pretrain` runs the rendered PyTorchJob locally with the real trainer.

Two replicas (Master + Worker, world size 2, gloo) each run `lmforge pretrain --backend inline`
on a tiny model and synthetic blocks. The Worker is killed mid-run: the runner restarts it per
restartPolicy, the broken world is restarted, and training resumes from its last checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from test_launch_local import kill_first_run_of

from lmforge.config import load_config
from lmforge.errors import LaunchError
from lmforge.launch.launcher import launch_pretrain
from lmforge.train.synthetic import write_synthetic_tokenized

TINY = [
    "model.n_layers=1",
    "model.d_model=32",
    "model.n_heads=2",
    "model.max_seq_len=32",
    "pretrain.max_steps=60",  # 50 steps after the first checkpoint: time enough to kill a worker
    "pretrain.micro_batch_size=4",
    "pretrain.warmup_steps=5",
    "pretrain.eval_every=60",
    "pretrain.eval_batches=2",
    "pretrain.log_every=20",
    "pretrain.ckpt_every=10",
    "pretrain.keep_last=2",
    "pretrain.precision=fp32",
    "pretrain.device=cpu",
    "pretrain.parallel=ddp",
    "pretrain.num_threads=1",
    "launch.peer_timeout_s=30",
    "launch.timeout_s=600",
]


@pytest.mark.slow
def test_dvc_default_pretrains_two_replicas_and_survives_a_killed_worker(
    tmp_path, monkeypatch, embedded_store
):
    monkeypatch.chdir(tmp_path)
    write_synthetic_tokenized(tmp_path / "outputs" / "tokenized", vocab_size=128, block_size=32)
    artifacts = f"tracking.artifact_location={tmp_path / 'mlartifacts'}"
    cfg = load_config(None, [*TINY, artifacts, "launch.api=pytorchjob"])  # its Master + Worker
    assert (cfg.launch.backend, cfg.launch.nnodes, cfg.launch.nproc_per_node) == ("local", 2, 1)
    checkpoints = tmp_path / "outputs" / "pretrain" / "checkpoints"

    def first_checkpoint() -> str | None:
        return max((p.name for p in checkpoints.glob("step-*")), default=None)

    killed: list[str] = []
    lines: list[str] = []
    result = launch_pretrain(
        cfg,
        Path("outputs/tokenized"),
        Path("outputs/pretrain"),
        backend=cfg.launch.backend,
        echo=lines.append,
        on_start=kill_first_run_of("worker-0", first_checkpoint, killed),
    )
    assert killed, "the worker finished before its first checkpoint"
    assert result.restarts >= 1 and result.backend == "local"
    assert any(line.startswith("[worker-0] exited with code 137; restarting") for line in lines)
    metrics = json.loads((tmp_path / "outputs" / "pretrain" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 60
    assert metrics["resumed_from"] >= int(killed[0].removeprefix("step-"))
    assert (tmp_path / "outputs" / "pretrain" / "model" / "config.json").exists()
    assert result.val_loss == metrics["val_loss"]
    # what `lmforge pretrain` prints: the trainer's metrics, then how the job ran
    assert list(asdict(result)) == [*metrics, "job", "replicas", "restarts", "backend"]
    assert any(line.startswith("[master-0] ") for line in lines)


def test_missing_blocks_are_named_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LaunchError, match=r"outputs/tokenized/blocks.*lmforge tokenize"):
        launch_pretrain(load_config(None), Path("outputs/tokenized"), Path("outputs/pretrain"))
