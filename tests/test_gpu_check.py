"""benchmarks/gpu_check: the CPU dry run's figures, the shell wrapper, the refusal without a GPU,
and the whole GPU control flow on a fake device, run as a lent GPU machine runs it (the tree
without .venv, plain python3, results to $OUT): a GPU comes for minutes, once."""

from __future__ import annotations

import json
import os
import shutil
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
    args = ["--dry-run", "--presets", preset, "--gpus", "1,8", "--out-dir", str(tmp_path)]
    assert gpu_check.main(args) == 0
    out = tmp_path / "gpu_dry_run.json"
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
    out = tmp_path / "gpu_dry_run.json"
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out-dir", str(tmp_path)],
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
        [sys.executable, "benchmarks/gpu_check.py", "--out-dir", str(tmp_path)],
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


def test_the_cuda_device_carries_the_index_set_device_needs(monkeypatch):
    """torch.cuda.set_device refuses torch.device("cuda") (no index): the check's first seconds
    on a real GPU. set_device validates with _get_device_index, which needs no GPU."""
    from torch.cuda._utils import _get_device_index

    with pytest.raises(ValueError, match="specified index"):
        _get_device_index(torch.device("cuda"))  # what the check passed before
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    device = gpu_check.resolve_device("cuda")
    assert device.type == "cuda" and _get_device_index(device) == 0


@pytest.mark.parametrize(
    ("memory_bytes", "expected"),
    [(80e9, range(1, 16)), (141e9, range(16, 17))],
    ids=["H100-80GB", "H200-141GB"],
)
def test_micro_batch_is_sized_from_the_devices_memory(memory_bytes, expected):
    micro = gpu_check.micro_batch_for("gpu-1b", memory_bytes)
    assert micro in expected  # 16 x 2048 needs about 84 GiB: more than an H100 has
    used = gpu_check.estimate("gpu-1b", 1, micro)["memory_estimate_bytes"]
    assert used <= gpu_check.MEMORY_HEADROOM * memory_bytes
    more = gpu_check.estimate("gpu-1b", 1, micro + 1)["memory_estimate_bytes"]
    assert micro == gpu_check.MICRO_BATCH["gpu-1b"] or more > gpu_check.MEMORY_HEADROOM * (
        memory_bytes
    )


def test_versions_are_checked_against_the_pins():
    assert gpu_check._satisfies("2.13.0", ">=2.13,<2.15")
    assert gpu_check._satisfies("2.14.1+cu128", ">=2.13,<2.15")
    assert not gpu_check._satisfies("2.5.1", ">=2.13,<2.15")
    assert not gpu_check._satisfies("6.0.0", ">=5.23,<6")
    assert set(gpu_check.pins()) == set(gpu_check.PINNED)


def _tree_as_a_gpu_machine_receives_it(tmp_path: Path) -> Path:
    """The files the check needs, no .venv, and a PATH whose python3 is not the project's venv
    by name (a wrapper; lmforge must come from the copied src/, which the results prove)."""
    tree = tmp_path / "tree"
    for part in ("src", "benchmarks"):
        shutil.copytree(ROOT / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 81559 MiB, 550'\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return tree


@pytest.mark.slow
def test_the_whole_gpu_flow_runs_on_a_fake_device_as_the_gpu_machine_runs_it(tmp_path):
    tree = _tree_as_a_gpu_machine_receives_it(tmp_path)
    out = tmp_path / "OUT"
    out.mkdir()
    env = {
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "OUT": str(out),
        "GPU_CHECK_FAKE_MEMORY_GIB": "80",
    }
    args = ["--device", "cpu", "--presets", "cpu-tiny", "--modes", "eager", "--warmup", "1"]
    args += ["--steps", "2", "--seq-len", "32"]
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((out / "gpu.json").read_text())
    versions = data["versions"]
    assert versions["lmforge_from"].startswith(str(tree / "src"))  # the tree's, not an install
    assert versions["torch"]["version"] == torch.__version__.split("+")[0] or versions["torch"][
        "version"
    ].startswith(torch.__version__.split("+")[0])
    assert versions["torch"]["within_pin"] and versions["transformers"]["within_pin"]
    assert data["smoke"]["status"] == "ok" and data["smoke"]["timed_steps"] == 1
    (case,) = data["cases"]
    assert case["status"] == "ok", case
    # Sized from the (fake) memory: the preset's most, as 80 GiB holds it; the mean of the two
    # steps after warm-up, not the last step alone.
    assert case["micro_batch"] == gpu_check.MICRO_BATCH.get("cpu-tiny", 8)
    assert case["timed_steps"] == 2 and len(case["step_s"]) == 2
    tokens = case["micro_batch"] * case["seq_len"] * 2
    assert case["tokens_per_s"] == pytest.approx(tokens / sum(case["step_s"]), rel=1e-2)
    assert 0 < case["mfu"] < 1 and case["peak_memory_bytes"] > 0
    assert case["precision"] == resolve("auto", torch.device("cpu")).name  # the trainer's choice
    for name in ("smoke.log", "cpu-tiny-eager.log", "gpu.md", "nvidia-smi.txt"):
        assert any(p.name == name for p in out.rglob("*")), name
    assert "NVIDIA H100 80GB HBM3" in (out / "nvidia-smi.txt").read_text()
    assert "| cpu-tiny | eager |" in (out / "gpu.md").read_text()
    assert not (tree / "benchmarks" / "results" / "gpu.json").exists()  # nothing in the tree
