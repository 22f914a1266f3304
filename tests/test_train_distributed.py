"""Multi-process training on CPU (gloo) with real torchrun processes.

- DDP and FSDP2 (with activation checkpointing) on 2 processes follow the single-process loss
  curve on the same global batch (fp32: equal up to summation order, tolerance 1e-4).
- A rank killed with SIGKILL under ``torchrun --max-restarts 1`` resumes from the last
  checkpoint, and the run ends with the same losses as an uninterrupted one (tolerance 1e-4).
- Under FSDP2 a rank holds only its half of the parameters, even at start (meta init), and the
  initial weights are exactly the one-process seeded model's.
- A 10-step FSDP2 run on 2 processes, rerun on 1 process with another micro-batch split of the
  same global batch and ``max_steps`` 20, resumes from its step-10 checkpoint (DCP reshards)
  and ends where an uninterrupted 20-step run does (tolerance 1e-4, as above).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from lmforge.train.distributed import torchrun_command
from lmforge.train.synthetic import write_synthetic_tokenized

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SETTINGS = [
    "model.n_layers=2",
    "model.d_model=64",
    "model.n_heads=4",
    "model.max_seq_len=32",
    "pretrain.max_steps=30",
    "pretrain.warmup_steps=5",
    "pretrain.lr=0.01",
    # Constant after warmup: a run's first steps are a longer run's, whatever max_steps (the
    # resume test reads its 20-step reference off the 30-step single-process run).
    "pretrain.min_lr_ratio=1.0",
    "pretrain.log_every=5",
    "pretrain.eval_every=15",
    "pretrain.eval_batches=2",
    "pretrain.ckpt_every=10",
    "pretrain.precision=fp32",
]
GLOBAL_BATCH = 8
TOL = 1e-4


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    write_synthetic_tokenized(root / "tokenized")
    return root


def env(root: Path) -> dict[str, str]:
    e = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    e.update(
        PATH=f"{BIN}:{e.get('PATH', '')}",
        MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        OMP_NUM_THREADS="1",
    )
    return e


def args(root: Path, out: str, parallel: str, nproc: int, *extra: str) -> list[str]:
    sets = [
        *SETTINGS,
        f"pretrain.parallel={parallel}",
        f"pretrain.micro_batch_size={GLOBAL_BATCH // nproc}",
        *extra,
    ]
    cmd = [
        "pretrain",
        "--backend",
        "inline",
        "--data",
        str(root / "tokenized"),
        "--out",
        str(root / out),
    ]
    return cmd + [a for s in sets for a in ("--set", s)]


def train_losses(out: Path) -> dict[int, float]:
    rows = csv.DictReader((out / "plots" / "loss.csv").open())
    return {int(r["step"]): float(r["train_loss"]) for r in rows}


@pytest.fixture(scope="module")
def runs(workdir) -> dict[str, Path]:
    """single (1 process) and ddp / fsdp+AC (2 processes via `lmforge pretrain --nproc 2`)."""
    outs = {}
    plan = {
        "single": ("single", 1, []),
        "ddp": ("ddp", 2, []),
        # FSDP2 with activation checkpointing: recomputation must not change the numbers either.
        "fsdp": ("fsdp", 2, ["pretrain.activation_checkpointing=true"]),
    }
    for name, (parallel, nproc, extra) in plan.items():
        cmd = [str(BIN / "lmforge"), *args(workdir, name, parallel, nproc, *extra)]
        if nproc > 1:
            cmd += ["--nproc", str(nproc)]
        proc = subprocess.run(cmd, env=env(workdir), capture_output=True, text=True, cwd=workdir)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[name] = workdir / name
    return outs


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_follow_the_single_process_curve(runs, mode):
    single, other = train_losses(runs["single"]), train_losses(runs[mode])
    assert list(single) == list(other) == list(range(5, 31, 5))
    for step, loss in single.items():
        assert other[step] == pytest.approx(loss, abs=TOL), step
    assert single[30] < single[5] - 1  # it learned something: the comparison is not of noise
    m = json.loads((runs[mode] / "metrics.json").read_text())
    assert m["world_size"] == 2
    assert m["val_loss"] == pytest.approx(
        json.loads((runs["single"] / "metrics.json").read_text())["val_loss"], abs=TOL
    )


def test_fsdp_checkpoints_are_sharded_per_rank(runs):
    step = runs["fsdp"] / "checkpoints" / "step-00000030"
    shards = sorted(p.name for p in step.glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]
    sizes = [(step / s).stat().st_size for s in shards]
    assert min(sizes) > 0.3 * max(sizes)  # each rank wrote its half, not one rank everything


def test_sigkilled_rank_resumes_and_matches_the_uninterrupted_run(workdir, runs):
    out = workdir / "killed"
    cmd = torchrun_command(2, args(workdir, "killed", "ddp", 2), max_restarts=1)
    proc = subprocess.Popen(
        cmd,
        env=env(workdir),
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoints" / "step-00000010").exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.02)
        workers = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if "pretrain" in " ".join(p.cmdline())
        ]
        assert len(workers) == 2
        workers[-1].send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] is not None and 10 <= metrics["resumed_from"] < 30, metrics
    reference, resumed = train_losses(runs["ddp"]), train_losses(out)
    assert list(resumed) == list(reference)
    for step, loss in reference.items():
        assert resumed[step] == pytest.approx(loss, abs=TOL), step
    assert metrics["val_loss"] == pytest.approx(
        json.loads((runs["ddp"] / "metrics.json").read_text())["val_loss"], abs=TOL
    )


def test_fsdp_on_two_processes_resumes_on_one_with_more_steps(workdir, runs):
    """Two processes -> one (as a node pool that shrank), 10 -> 20 steps, micro batch 4 x 1
    accumulation per rank -> 4 x 2 on the one rank: the same global batch of 8, so the same
    sequences at every step. The schedule is constant after warmup (``min_lr_ratio=1``), so
    the first run's 10 steps are the same trajectory as the uninterrupted run's first 10 and
    the losses must agree (uninterrupted: the first 20 steps of the 30-step ``single`` run);
    they agree to summation order only (two ranks reduce gradients in another order than one,
    and FSDP2 shards the optimizer step), hence the tolerance."""

    def run(out: str, parallel: str, nproc: int, *sets: str) -> str:
        cmd = [str(BIN / "lmforge"), *args(workdir, out, parallel, nproc, *sets)]
        cmd += ["--nproc", str(nproc)] if nproc > 1 else []
        proc = subprocess.run(cmd, env=env(workdir), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr

    run("grown", "fsdp", 2, "pretrain.max_steps=10")
    split = ["pretrain.micro_batch_size=4", "pretrain.grad_accum_steps=2"]
    stderr = run("grown", "fsdp", 1, "pretrain.max_steps=20", *split)
    checkpoint = workdir / "grown" / "checkpoints" / "step-00000010"
    assert (
        f"resuming from {checkpoint} (max_steps 10 -> 20: schedule recomputed for 20 steps; "
        "world size 2 -> 1: resharded; micro batch x accumulation 4x1 -> 4x2)"
    ) in stderr
    assert json.loads((workdir / "grown" / "metrics.json").read_text())["resumed_from"] == 10
    grown_losses = train_losses(workdir / "grown")
    reference = {step: loss for step, loss in train_losses(runs["single"]).items() if step <= 20}
    assert list(grown_losses) == list(reference) == [5, 10, 15, 20]
    for step, loss in reference.items():
        assert grown_losses[step] == pytest.approx(loss, abs=TOL), step
    assert reference[20] < reference[5] - 1  # it learned: the comparison is not of noise


META_INIT = """
import torch, torch.distributed as dist
from lmforge.config import ModelConfig, TrainConfig
from lmforge.model import build_config, build_model
from lmforge.train.distributed import init_distributed
from lmforge.train.parallel import full_state_dict, meta_init, parallelize

rt = init_distributed("cpu", 1)
hf = build_config(ModelConfig(n_layers=2, d_model=64, n_heads=4, max_seq_len=32, vocab_size=512))
cfg = TrainConfig(parallel="fsdp")
with meta_init(cfg, rt):
    model = build_model(hf, seed=7)
assert any(p.is_meta for p in model.parameters()) == (rt.rank == 1)
model = parallelize(model, cfg, rt)
local = sum(p.to_local().numel() for p in model.parameters())
total = sum(p.numel() for p in model.parameters())  # tied embedding counted once
assert model.lm_head.weight is model.model.embed_tokens.weight
assert 0.45 * total <= local <= 0.55 * total, (local, total)
reference = build_model(hf, seed=7)
for (name, buf), ref in zip(model.named_buffers(), reference.buffers(), strict=True):
    assert torch.equal(buf, ref), name  # non-persistent RoPE frequencies, on every rank
state = full_state_dict(model)
if rt.rank == 0:
    expected = reference.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
dist.destroy_process_group()
"""


def test_fsdp_ranks_hold_half_the_weights_and_start_from_the_seeded_model(tmp_path):
    script = tmp_path / "meta_init.py"
    script.write_text(META_INIT)
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node=2", str(script)]
    proc = subprocess.run(cmd, env=env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
