"""One step, two faces, the same numbers: ``lmforge finetune`` (the CLI that dvc.yaml runs) and the
finetune KFP component (the session's local pipeline run) on the same inputs and micro config.

Both enter through ``lmforge.machine`` (the CLI in ``main``, the component in
``kfp.runtime.step_config``): threads, the allocator and, on an AMD CPU, MKL's fast kernels are
set the same way, so the scores agree to the last digit. Before, only the CLI took MKL's fast
path, and on AMD the component trained with other kernels.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from lmforge_components.testing import MICRO, REPO

SCORES = (
    "steps",
    "best_step",
    "val_accuracy",
    "val_macro_f1",
    "val_loss",
    "baseline_steps",
    "baseline_best_step",
    "baseline_val_accuracy",
    "baseline_val_macro_f1",
    "baseline_val_loss",
)


def test_the_finetune_cli_and_component_give_the_same_scores(full_pipeline_run, tmp_path):
    component = json.loads(
        (full_pipeline_run.task("finetune") / "finetuned/metrics.json").read_text()
    )
    sets = [a for o in [*MICRO, "register.min_primary=0.0"] for a in ("--set", o)]
    cmd = [
        str(Path(sys.executable).parent / "lmforge"),
        "finetune",
        "--pretrained", str(full_pipeline_run.task("pretrain") / "pretrained"),
        "--data", str(full_pipeline_run.task("augment") / "augmented"),
        "--out", str(tmp_path / "finetune"),
        "--params", str(REPO / "params.yaml"),
        *sets,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # cwd's own store
    # ... a copy of the run's: a store already made (a new one costs its schema migrations)
    shutil.copy(full_pipeline_run.root / "mlflow.db", tmp_path / "mlflow.db")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli = json.loads((tmp_path / "finetune" / "metrics.json").read_text())
    assert {k: cli.get(k) for k in SCORES} == {k: component.get(k) for k in SCORES}
    assert cli["val_loss"] is not None
