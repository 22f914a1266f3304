"""DVC end to end: a fresh clone pulls ``data/`` from the in-repo remote. ``dvc repro`` of the data
stages, then nothing to do the second time, is tests/test_dvc_pipeline.py's (the whole chain, of
which the data stages are the start: one repro for both)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

pytestmark = pytest.mark.slow


def run(*cmd: str, cwd: Path, env: dict | None = None) -> str:
    env = {**ENV, **(env or {})}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_fresh_clone_pulls_the_data_offline(tmp_path):
    clone = tmp_path / "clone"
    run("git", "clone", "--quiet", str(REPO), str(clone), cwd=tmp_path)
    run(str(BIN / "dvc"), "pull", "--quiet", "--allow-missing", cwd=clone)
    manifest = json.loads((clone / "data" / "manifest.json").read_text())
    assert {
        "corpus/brown.jsonl",
        "corpus/shakespeare.jsonl",
        "corpus/kjv.jsonl",
        "labelled/spam.jsonl",
    } == set(manifest["files"])
    for rel, info in manifest["files"].items():
        blob = (clone / "data" / rel).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == info["sha256"]
        assert blob.count(b"\n") == info["records"]
    assert "up to date" in run(str(BIN / "dvc"), "status", "data.dvc", cwd=clone)
