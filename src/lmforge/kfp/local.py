"""KFP's local ``SubprocessRunner`` set up for lmforge, and what its runs leave behind
(``lmforge_pipelines.run_local`` runs a whole pipeline on it; the components' tests, one).

The same compiled DAG a cluster runs, executed task by task as subprocesses of this
interpreter (``use_venv=False``: lmforge is installed here, as on the image), with the
pretrain step on the launcher's local runner of the PyTorchJob spec. Artifacts land under
``<workdir>/runs/<pipeline>-<timestamp>/<task>/<output>``; MLflow runs go where the config
says (the embedded store by default), nested under one parent tagged with the local run id.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from lmforge.errors import PipelineError


def init_local(workdir: Path) -> None:
    """Point KFP's local runner at ``workdir`` and make ``lmforge`` findable by subprocesses."""
    from kfp import local

    # The components name the lmforge image, which this interpreter stands for: KFP's warning
    # about a non-Python image under the SubprocessRunner is expected, once per task.
    warnings.filterwarnings(
        "ignore", message="You may be attemping to run a task", category=RuntimeWarning
    )
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str((workdir / "runs").resolve()),
        workspace_root=str((workdir / "workspace").resolve()),
        raise_on_error=True,
    )


def latest_run(workdir: Path, pipeline_name: str) -> Path:
    """The newest run folder of ``pipeline_name`` under ``workdir`` (KFP names them by time)."""
    runs = sorted((workdir / "runs").glob(f"{pipeline_name}-*"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise PipelineError(f"{workdir}/runs: no run of {pipeline_name}")
    return runs[-1]


def task_output(task_dir: Path, key: str = "Output") -> Any:
    """An output parameter of a finished local task (``Output``: its return value)."""
    record = json.loads((task_dir / "executor_output.json").read_text())
    return record.get("parameterValues", {}).get(key)
