"""``lmforge pipeline run-local``: a pipeline through KFP's local ``SubprocessRunner``.

The same compiled DAG a cluster runs, executed task by task as subprocesses of this
interpreter (``lmforge.kfp.local``), with the pretrain step on the launcher's local runner.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.errors import PipelineError
from lmforge.kfp.local import init_local, latest_run, task_output
from lmforge_pipelines.compile import build_pipeline


def pipeline_arguments(
    cfg: Config, name: str, data_dir: Path, pretrain_dir: Path, tokenized_dir: Path
) -> dict[str, Any]:
    """The pipeline's parameters for a run on this machine: local folders, local backend. The
    run form's fields keep their defaults, which ``build_pipeline`` took from ``cfg``."""
    args: dict[str, Any] = {"data_uri": str(data_dir.resolve()), "overrides": []}
    if name == "sweep":  # trials of pretrain on a tokenize output; no raw data
        args = {**args, "tokenized_uri": str(tokenized_dir.resolve())}
        del args["data_uri"]
    elif name in ("finetune", "sft"):
        args["pretrained_uri"] = str(pretrain_dir.resolve())
        args["tokenized_uri"] = str(tokenized_dir.resolve())
    else:
        args["backend"] = "local"
    for key in ("data_uri", "pretrained_uri", "tokenized_uri"):
        if key in args and not Path(args[key]).is_dir():
            raise PipelineError(
                f"{args[key]}: folder not found (the {key.removesuffix('_uri')} input of the "
                f"{name} pipeline); for data/ run `make data` (dvc pull)"
            )
    return args


def run_local(
    cfg: Config,
    name: str = "full",
    workdir: Path = Path("outputs/kfp-local"),
    data_dir: Path = Path("data"),
    pretrain_dir: Path = Path("outputs/pretrain"),
    tokenized_dir: Path = Path("outputs/tokenized"),
    arguments: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run pipeline ``name`` locally; return its run folder, the gate and what was registered.
    ``arguments``: more pipeline parameters (e.g. ``{"ladder": True}`` for the sweep)."""
    workdir = Path(workdir)
    pipeline = build_pipeline(cfg, name)
    args = pipeline_arguments(cfg, name, Path(data_dir), Path(pretrain_dir), Path(tokenized_dir))
    args |= arguments or {}
    init_local(workdir)
    try:
        pipeline(**args)
    except RuntimeError as exc:  # raise_on_error: the failing task's logs are printed above
        raise PipelineError(f"local run of {name} failed: {exc}") from None
    run = latest_run(workdir, f"{cfg.kubeflow.pipeline_prefix}-{name}").resolve()
    result: dict[str, Any] = {"pipeline": name, "run_dir": str(run)}
    registered = run / "register" / "registered" / "registered.json"
    if name == "sweep":
        result["best"] = task_output(run / "sweep-best")
    elif name != "pretrain":
        result["gate_passed"] = task_output(run / "evaluate")
        result["registered"] = json.loads(registered.read_text()) if registered.exists() else None
    return result
