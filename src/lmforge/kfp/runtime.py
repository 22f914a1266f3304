"""What every component does around its step, inside the component's container.

A component's body is four lines: rebuild the typed config from the pipeline parameters
(``step_config``), call the step function with the artifact paths as folders, publish the step's
report file to the artifact the KFP UI renders (``publish``), and log its ``metrics.json``
(``log_metrics``). The pretrain step also stages its data onto the shared volume when it launches
a PyTorchJob on the cluster (``pretrain_on_backend``).

Nothing heavy is imported here: the step functions bring torch and mlflow themselves.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from lmforge.config import Config, load_config_text

PARAMS_SOURCE = "pipeline parameter 'params'"


def step_config(params: str, overrides: list[str], run_id: str, task_name: str) -> Config:
    """The typed config of this pipeline run, with the KFP ids exported for MLflow's tags.

    ``lmforge.tracking`` finds the parent MLflow run by ``LMFORGE_PIPELINE_RUN_ID`` (so every
    step of one KFP run nests under one parent), tags that parent with ``KFP_RUN_ID`` and each
    step's run with ``KFP_TASK_NAME``. First, the machine tweaks every face applies
    (``lmforge.machine.enter``): a component computes with the kernels the CLI would.
    """
    from lmforge import machine

    machine.enter()
    if run_id:
        os.environ["LMFORGE_PIPELINE_RUN_ID"] = run_id
        os.environ["KFP_RUN_ID"] = run_id
    if task_name:
        os.environ["KFP_TASK_NAME"] = task_name
    return load_config_text(params, list(overrides or []), source=PARAMS_SOURCE)


def log_metrics(metrics: Any, step_dir: Path) -> dict[str, float]:
    """Log the step's ``metrics.json`` to a KFP ``Metrics`` artifact (the run's metrics tab)."""
    from lmforge.tracking import flat_metrics

    values = flat_metrics(json.loads((Path(step_dir) / "metrics.json").read_text()))
    for name, value in sorted(values.items()):
        metrics.log_metric(name, value)
    return values


def publish(report_file: Path, artifact: Any) -> None:
    """Copy a report the step wrote to the HTML/Markdown artifact the KFP UI shows."""
    target = Path(artifact.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(report_file, target)


def pretrain_on_backend(
    cfg: Config, tokenized: Path, out: Path, backend: str, run_id: str, **options: Any
) -> Any:
    """Launch pretraining and leave its output folder at ``out``.

    ``local``: the launcher's local runner of the PyTorchJob spec, straight on the artifact
    folders. ``kubernetes``: the job's pods cannot see this pod's artifact folders, so the data is
    staged onto the shared volume (mounted here and in the job at ``launch.mount_path``), the job
    writes its output and checkpoints there, and the output is copied into the ``Model`` artifact.

    The staging folder belongs to the run id, as the job does: a retried step (same run id)
    finds the data already staged, adopts the job (running, or finished: its output is
    collected) and the job resumes from its checkpoints there. It is removed only once a
    succeeded job's output has been collected; a failure leaves it for the retry.
    ``options`` go to ``launch_pretrain`` (``api``, ``echo``). With ``finetune.base_model`` set
    (and no ``pretrain.init_from``) nothing is launched: ``out`` gets the skipped output of
    ``lmforge.train.skipped``, which evaluate and register read as "no LM in this run".
    """
    from lmforge.launch.launcher import launch_pretrain
    from lmforge.train.skipped import skip_pretrain

    if (skipped := skip_pretrain(cfg, out)) is not None:  # finetune.base_model: nothing to train
        return skipped
    if backend != "kubernetes":
        return launch_pretrain(cfg, tokenized, out, backend=backend, **options)
    if options.get("api") is None:  # no credentials: fail before touching the volume
        from lmforge.launch.kube import api_client

        options["api"] = api_client()
    from lmforge.tracking import pipeline_run_id

    # The job is named after the same id (``pytorchjob.render``): one folder per job.
    stage = Path(cfg.launch.mount_path) / "kfp" / (run_id or pipeline_run_id(cfg))
    staged_data, staged_out = stage / "tokenized", stage / "pretrain"
    _stage_once(tokenized, staged_data)
    result = launch_pretrain(cfg, staged_data, staged_out, backend="kubernetes", **options)
    shutil.copytree(staged_out, out, dirs_exist_ok=True)
    shutil.rmtree(stage, ignore_errors=True)  # collected: no job of this run needs it any more
    return result


def _stage_once(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` unless an earlier attempt did: a job of the same run may be
    reading it right now, so a staged copy is never rewritten in place. The mark beside it is
    written last, so a copy cut short is recognised (and no job was created from it)."""
    mark = dest.with_name(dest.name + ".staged")
    if mark.exists():
        return
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(src, partial)
    shutil.rmtree(dest, ignore_errors=True)  # an unmarked copy: cut short before any job
    partial.rename(dest)
    mark.write_text("")
