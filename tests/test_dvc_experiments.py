"""`dvc exp run --queue -S pretrain.lr=...` on this project, then `dvc exp run --run-all` and
`dvc exp show`: every queued experiment ran the real pretrain stage with its own value, DVC
lists each with its metrics, and each one's MLflow run is in the project's store (a queued
experiment runs in a temporary copy under .dvc/tmp/exps; lmforge resolves the store against
DVC_ROOT, the project).

Kept cheap: the project's own pretrain stage on a micro model, its input (the tokenize stage's
outputs) made by a seed stage that writes synthetic blocks, run and committed first."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LRS = ("0.001", "0.003")
SEED_CMD = (
    f'{sys.executable} -c "from lmforge.train.synthetic import write_synthetic_tokenized; '
    "write_synthetic_tokenized('outputs/tokenized', n_blocks={'train': 32, 'validation': 4})\""
)
MICRO = {
    "model": {"n_layers": 1, "d_model": 32, "n_heads": 2, "max_seq_len": 32},
    "pretrain": {
        "max_steps": 4,
        "micro_batch_size": 4,
        "warmup_steps": 1,
        "eval_every": 0,
        "eval_batches": 1,
        "ckpt_every": 0,
        "precision": "fp32",
        "num_threads": 1,
    },
    "launch": {"backend": "inline"},
}


def run(*cmd: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the project's
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
    )
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory, blank_store_db) -> Path:
    """A git + DVC copy of the project: its inputs and pretrain stages as dvc.yaml has them, a
    seed stage in place of the data stages, micro params; the seed run and everything
    committed."""
    work = tmp_path_factory.mktemp("dvc-exp")
    shutil.copytree(REPO / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".gitignore", work / ".gitignore")
    shutil.copyfile(blank_store_db, work / "mlflow.db")  # the project's store (git-ignored)
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    seed = {"cmd": SEED_CMD, "outs": ["outputs/tokenized/tokenizer", "outputs/tokenized/blocks"]}
    picked = {"seed": seed, "inputs": stages["inputs"], "pretrain": stages["pretrain"]}
    dvc_yaml = {"stages": picked}
    (work / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in MICRO.items():
        params[section].update(values)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run("git", "init", "--quiet", cwd=work)
    run(str(BIN / "dvc"), "init", "--quiet", cwd=work)
    run(str(BIN / "dvc"), "repro", "--quiet", "seed", cwd=work)
    run("git", "add", ".", cwd=work)
    run("git", "commit", "--quiet", "-m", "micro project", cwd=work)
    return work


@pytest.mark.slow
def test_queued_experiments_run_and_show_their_metrics(project):
    for lr in LRS:
        run(str(BIN / "dvc"), "exp", "run", "--queue", "-S", f"pretrain.lr={lr}", cwd=project)
    run(str(BIN / "dvc"), "exp", "run", "--run-all", "--jobs", "2", cwd=project)

    shown = json.loads(run(str(BIN / "dvc"), "exp", "show", "--json", cwd=project))
    baseline = next(rev for rev in shown if rev.get("experiments"))
    exps = [e["revs"][0] for e in baseline["experiments"]]
    by_lr = {}
    for exp in exps:
        data = exp["data"]
        lr = data["params"]["params.yaml"]["data"]["pretrain"]["lr"]
        by_lr[str(lr)] = data["metrics"]["outputs/pretrain/metrics.json"]["data"]
    assert sorted(by_lr) == sorted(LRS)
    for metrics in by_lr.values():
        assert metrics["steps"] == 4 and metrics["val_loss"] > 0
    assert by_lr[LRS[0]]["val_loss"] != by_lr[LRS[1]]["val_loss"]  # each trained its own lr

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`lmforge.stage` = 'pretrain'",
    )
    assert sorted(r.data.params["pretrain.lr"] for r in runs) == sorted(LRS)
    assert all(r.info.status == "FINISHED" for r in runs)


def test_a_relative_store_is_the_projects_under_dvc(tmp_path, monkeypatch):
    from lmforge.config import load_config
    from lmforge.tracking import artifact_location, tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, [])
    assert tracking_uri(cfg) == f"sqlite:///{tmp_path / 'mlflow.db'}"  # no DVC: the cwd
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "project"))  # a queued experiment's copy
    assert tracking_uri(cfg) == f"sqlite:///{tmp_path / 'project' / 'mlflow.db'}"
    assert artifact_location(cfg) == (tmp_path / "project" / "mlartifacts").as_uri()
