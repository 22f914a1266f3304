"""The CLI as a user runs it: a real subprocess of the installed console script."""

from __future__ import annotations

import os
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
    for cmd in (
        "validate",
        "augment",
        "tokenize",
        "pretrain",
        "finetune",
        "evaluate",
        "register",
        "promote",
        "pipeline",
        "ui",
    ):
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
    [
        ("pretrain.nope=1", "pretrain.nope: unknown key"),
        ("pretrain.lr=abc", "pretrain.lr: expected float"),
    ],
)
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


def _one_paragraph(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if "Warning" not in ln and ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("  warnings.warn")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_unreachable_pipeline_host_is_one_paragraph_naming_the_cause():
    proc = run("pipeline", "submit", "full", "--host", "http://127.0.0.1:9", "--force")
    assert proc.returncode == 1
    line = _one_paragraph(proc.stderr)
    assert line.startswith("error: lmforge pipeline submit: a server could not be reached")
    assert "127.0.0.1" in line and "Fix: check the address" in line


def _failing_command(exc: str, debug: bool) -> subprocess.CompletedProcess:
    code = (
        "import sys; from lmforge import cli\n"
        "@cli.app.command()\n"
        f"def boom():\n    raise {exc}\n"
        "cli.main(['boom'])\n"
    )
    env = {**os.environ, "LMFORGE_DEBUG": "1" if debug else "0"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        ("OSError(28, 'No space left on device', '/x/out')", "a file operation failed (/x/out)"),
        ("RuntimeError('boom\\nsecond line')", "unexpected RuntimeError: boom second line"),
        ("RecursionError('deep')", "RecursionError: deep"),
    ],
)
def test_any_exception_becomes_one_paragraph_and_a_non_zero_exit(exc, expected):
    proc = _failing_command(exc, debug=False)
    assert proc.returncode == 1
    line = _one_paragraph(proc.stderr)
    assert line.startswith("error: lmforge boom: ") and expected in line
    assert "Fix: " in line


def test_debug_env_adds_the_traceback():
    proc = _failing_command("RuntimeError('boom')", debug=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: lmforge boom: unexpected RuntimeError: boom")
    assert "Traceback (most recent call last)" in proc.stderr


def test_every_parameter_is_documented_in_help_and_docs():
    from lmforge.config import SECTIONS
    from lmforge.config.docs import markdown
    from lmforge.config.schema import field_docs

    docs = [doc for cls in SECTIONS.values() for doc in field_docs(cls)]
    assert len(docs) > 140 and all(doc.doc for doc in docs)
    help_text = run("pretrain", "--help").stdout
    assert "pretrain.lr (float, default 0.002; > 0 and <= 1)" in help_text
    assert "launch.backoff_limit" in help_text
    assert (REPO / "docs" / "params.md").read_text() == markdown() + "\n", (
        "docs/params.md is stale: lmforge params --markdown > docs/params.md"
    )
