"""The CLI as a user runs it: a real subprocess of the installed console script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LMFORGE = shutil.which("lmforge") or str(Path(sys.executable).parent / "lmforge")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LMFORGE, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_help_lists_every_stage():
    proc = run("--help")
    assert proc.returncode == 0
    for cmd in ("validate", "augment", "tokenize", "pretrain", "finetune", "evaluate",
                "register", "promote", "pipeline", "ui"):  # fmt: skip
        assert cmd in proc.stdout


def test_help_imports_no_heavy_library():
    # What keeps `lmforge --help` fast (timed in benchmarks/cli_startup.py, not here).
    code = (
        "import sys; from lmforge import cli; "
        "heavy = [m for m in ('torch', 'mlflow', 'great_expectations', 'kfp', 'transformers') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("override", "expected"),
    [("pretrain.nope=1", "pretrain.nope: unknown key"),
     ("pretrain.lr=abc", "pretrain.lr: expected float")],
)  # fmt: skip
def test_bad_override_exits_non_zero_with_one_line(override, expected):
    proc = run("pretrain", "--set", override, "--render")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0]
    assert "params.yaml" in lines[0]


def test_pipeline_subcommands_exist():
    proc = run("pipeline", "--help")
    assert proc.returncode == 0
    for cmd in ("compile", "submit", "run-local"):
        assert cmd in proc.stdout
