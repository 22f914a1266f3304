"""DVC end to end: a fresh clone pulls ``data/`` from the in-repo remote, and ``dvc repro
tokenize`` runs the data stages, then finds nothing to do the second time (but fingerprint the
external inputs: ``lmforge inputs`` runs on every repro)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from data_fixtures import make_raw_data

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


def test_repro_tokenize_then_nothing_to_do(tmp_path, blank_store_db):
    work = tmp_path / "repo"
    shutil.copyfile(blank_store_db, tmp_path / "mlflow.db")
    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    # The data stages' code dependencies, as dvc.yaml lists them (it hashes them); the package
    # itself runs from the venv.
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage in ("inputs", "validate", "augment", "tokenize"):
        for dep in stages[stage]["deps"]:
            if dep.startswith("src/"):
                (work / dep).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / dep, work / dep)
    shutil.copy(REPO / "dvc.yaml", work / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(validation_share=0.2, test_share=0.2)
    params["tokenizer"].update(vocab_size=400, block_size=32, num_proc=1)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    make_raw_data(work / "data")
    run("git", "init", "--quiet", cwd=work)
    run(str(BIN / "dvc"), "init", "--quiet", cwd=work)

    first = run(str(BIN / "dvc"), "repro", "tokenize", cwd=work, env=store)
    for stage in ("inputs", "validate", "augment", "tokenize"):
        assert f"Running stage '{stage}'" in first
    meta = json.loads((work / "outputs" / "tokenized" / "blocks" / "meta.json").read_text())
    assert meta["block_size"] == 32 and meta["splits"]["train"]["n_blocks"] > 0
    import mlflow

    client = mlflow.MlflowClient(store["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    status = {r.data.tags.get("lmforge.stage"): r.info.status for r in runs}
    assert {s: status.get(s) for s in ("validate", "augment", "tokenize")} == dict.fromkeys(
        ("validate", "augment", "tokenize"), "FINISHED"
    )
    lock = yaml.safe_load((work / "dvc.lock").read_text())
    assert {"validate", "augment", "tokenize"} <= set(lock["stages"])

    second = run(str(BIN / "dvc"), "repro", "tokenize", cwd=work, env=store)
    # inputs runs every time (always_changed); its file is the same, so nothing after it runs
    assert re.findall(r"Running stage '(\w+)'", second) == ["inputs"]
    assert "didn't change" in second or "up to date" in second
