"""benchmarks/gpu_check: the CPU dry run's figures, the shell wrapper, the refusal without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmforge.model import build_model, model_size
from lmforge.train.precision import resolve

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


@pytest.mark.parametrize(("preset", "near"), [("gpu-125m", 125e6), ("gpu-1b", 1.2e9)])
def test_dry_run_figures_match_the_model(preset, near, tmp_path):
    out = tmp_path / "dry.json"
    assert (
        gpu_check.main(["--dry-run", "--presets", preset, "--gpus", "1,8", "--out", str(out)]) == 0
    )
    rows = {r["gpus"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {1, 8}
    _, hf = gpu_check.preset_config(preset)
    size = model_size(hf, rows[1]["seq_len"])
    assert rows[1]["flops_per_token"] == rows[8]["flops_per_token"] == size.flops_per_token
    # The analytic count is the built model's (on the meta device: no memory, no time).
    with torch.device("meta"):
        model = build_model(hf)
    assert rows[1]["n_params"] == sum(p.numel() for p in model.parameters())
    assert abs(rows[1]["n_params"] - near) / near < 0.15  # tied 32k embeddings: 110M, 1.04B
    # FSDP2 shards the states: the sharded part is 1/N, the rest does not change with N.
    one, eight = rows[1], rows[8]
    assert one["sharded_state_bytes"] == pytest.approx(8 * eight["sharded_state_bytes"])
    assert one["sharded_state_bytes"] == 16 * one["n_params"]
    rest = one["memory_estimate_bytes"] - one["sharded_state_bytes"]
    assert eight["memory_estimate_bytes"] - eight["sharded_state_bytes"] == pytest.approx(rest)
    assert one["memory_estimate_bytes"] > eight["memory_estimate_bytes"]


def test_shell_dry_run_writes_the_json(tmp_path):
    out = tmp_path / "dry.json"
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {(r["preset"], r["gpus"]) for r in rows} == {
        (p, n) for p in ("gpu-125m", "gpu-1b") for n in (1, 8)
    }
    assert "memory: per GPU = 16 B x params / N" in proc.stdout


def test_real_mode_without_a_gpu_refuses_in_one_line(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU visible even on a GPU machine
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU visible" in lines[0] and "--dry-run" in lines[0]
    assert not out.exists()


def test_shell_without_nvidia_smi_refuses(tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with bash's tools but no nvidia-smi
    bin_dir.mkdir()
    for tool in ("dirname", "bash"):
        found = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        (bin_dir / tool).symlink_to(found)
    proc = subprocess.run(
        [str(bin_dir / "bash"), "benchmarks/gpu_check.sh"],
        cwd=ROOT,
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gpu_check.sh: nvidia-smi not found, so no NVIDIA GPU here; on CPU run: "
        "bash benchmarks/gpu_check.sh --dry-run"
    ]


def test_docs_page_says_not_run_and_how_to_run():
    text = (ROOT / "docs/benchmarks/gpu.md").read_text()
    assert "prepared, not yet run" in text and "No GPU was drawn" in text
    assert "bash benchmarks/gpu_check.sh" in text


def test_render_of_a_gpu_result_lists_every_case(tmp_path):
    case = {"preset": "gpu-1b", "mode": "compiled", "status": "ok", "tokens_per_s": 50000.0}
    case.update(mfu=0.41, peak_memory_bytes=70 * 2**30, micro_batch=16, seq_len=2048)
    failed = {"preset": "gpu-1b", "mode": "eager", "status": "timeout after 75 s"}
    machine = {"machine_class": "AVX512 CPU", "cpu_model": "x", "capabilities": ["AVX512"]}
    machine.update(cores=16, threads=16, torch="2", gpu="NVIDIA H200", gpus=1)
    data = {"mode": "gpu", "machine": machine, "mfu_goal": {"gpu-1b": 0.4}, "cases": [case, failed]}
    results, doc = tmp_path / "gpu.json", tmp_path / "gpu.md"
    results.write_text(json.dumps(data))
    assert gpu_check.main(["--render", str(results), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "| gpu-1b | compiled | 50,000 | 41.0% | 70.0 | 16 x 2048 | ok |" in text
    assert "| gpu-1b | eager | | | | | timeout after 75 s |" in text
    assert "1x NVIDIA H200" in text and "not yet run" not in text


@pytest.mark.slow
def test_one_case_runs_the_training_loop_on_cpu(tmp_path):
    """The real mode's code path (FSDP2 world of one, fit, MFU, memory) on a tiny CPU model."""
    out = tmp_path / "run.json"
    args = ["--device", "cpu", "--presets", "cpu-tiny", "--modes", "eager", "--warmup", "1"]
    args += ["--steps", "2", "--micro-batch", "2", "--seq-len", "32", "--out", str(out)]
    assert gpu_check.main(args) == 0
    (case,) = json.loads(out.read_text())["cases"]
    assert case["status"] == "ok", case
    assert case["tokens_per_s"] > 0 and 0 < case["mfu"] < 1 and case["peak_memory_bytes"] > 0
    assert case["parallel"] == "fsdp2, world 1"
    assert case["precision"] == resolve("auto", torch.device("cpu")).name  # the trainer's choice
