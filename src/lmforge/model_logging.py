"""A trained model folder logged as an MLflow LoggedModel of the run that trained it, once.

``log_model_folder(client, experiment_id, run_id, spec, root)`` (the training tracker's ``model``
record; register's fallback for a folder no run of this store logged):

- creates the LoggedModel (``source_run_id``: the run; tagged with ``spec["record_id"]`` so a
  retried record finds it again instead of logging the weights twice), declares it the run's
  output at its step, and logs the folder with MLflow's transformers flavour (from the path: the
  files are copied, the model is not loaded) with explicit pip requirements and a signature;
- logs the model's own metrics on it (``model_id``, and the dataset they were measured on);
- with ``spec["weights"]`` false (a sweep trial, a scaling rung: many models, most thrown away)
  records the model the same way without uploading its weights (the tag ``lmforge.model_dir``
  names the folder), so trials are still ranked by ``search_logged_models``;
- records each periodic checkpoint still on disk as a LoggedModel of the same run, at its step,
  with the validation numbers of that step and no artifacts (the DCP shards stay in the step's
  output; their path is the tag ``lmforge.checkpoint``): ``search_logged_models`` ranks them.
"""

from __future__ import annotations

import concurrent.futures
import os
from importlib import metadata
from pathlib import Path
from typing import Any

from lmforge.lineage import log_model_metrics

# Installed distributions the logged models need; pinned explicitly because MLflow's inference
# would otherwise demand torchvision for a transformers model.
MODEL_REQUIREMENTS = ("mlflow", "transformers", "torch", "tokenizers", "safetensors", "numpy")
RECORD_TAG = "lmforge.record_id"
CHECKPOINT_TAG = "lmforge.checkpoint"
FOLDER_TAG = "lmforge.model_dir"  # a model recorded without its weights: where they are


def requirements() -> list[str]:
    pins = []
    for dist in MODEL_REQUIREMENTS:
        version = metadata.version(dist).split("+")[0]  # torch 2.13.0+cpu -> the public version
        pins.append(f"{dist}=={version}")
    return pins


def _find(client, experiment_id: str, record_id: str):
    found = client.search_logged_models(
        [experiment_id], filter_string=f"tags.`{RECORD_TAG}` = '{record_id}'", max_results=1
    )
    return found[0] if found else None


def _create(client, experiment_id, run_id, name, record_id, step, tags, model_type=None):
    from mlflow.entities import LoggedModelOutput

    model = _find(client, experiment_id, record_id) or client.create_logged_model(
        experiment_id,
        name=name,
        source_run_id=run_id,
        tags={**tags, RECORD_TAG: record_id},
        model_type=model_type,
    )
    run = client.get_run(run_id)
    declared = {o.model_id for o in (run.outputs.model_outputs if run.outputs else [])}
    if model.model_id not in declared:  # once: the store refuses a second identical row
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=int(step))])
    return model


def log_model_folder(
    client, experiment_id: str, run_id: str, spec: dict[str, Any], root: Path
) -> str:
    """Log ``root / spec["path"]`` as described in the module doc; returns the model id."""
    import mlflow
    from mlflow.entities import LoggedModelStatus
    from mlflow.models import infer_signature

    from lmforge.registry.compat import transformers5_checkpoint_compat

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # MLflow would ask the hub for a model card
    tags = dict(spec.get("tags") or {})
    step, record = int(spec.get("step", 0)), spec["record_id"]
    weights = spec.get("weights", True)
    if not weights:  # recorded, not uploaded: the folder stays in the step's output
        tags[FOLDER_TAG] = spec["path"]
    model = _create(client, experiment_id, run_id, spec["name"], record, step, tags, spec["task"])
    if model.status != LoggedModelStatus.READY and not weights:
        log_model_metrics(
            client, run_id, model.model_id, spec["metrics"], spec.get("dataset"), step
        )
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    elif model.status != LoggedModelStatus.READY:
        signature = infer_signature(spec["example"], spec["output_example"], spec.get("params"))

        def log() -> None:
            with transformers5_checkpoint_compat():
                mlflow.transformers.log_model(
                    str(Path(root) / spec["path"]),  # a path: copied, not loaded
                    name=spec["name"],
                    task=spec["task"],
                    signature=signature,
                    input_example=spec["example"],
                    pip_requirements=requirements(),
                    model_id=model.model_id,
                )

        # From a thread of its own: inside a fluent run (register's) MLflow would copy the run's
        # metrics of that step onto this model, other models' included (the history it reads
        # them from drops their model_id). The fluent run is per thread; this one has none.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(log).result()
        values, data = spec["metrics"], spec.get("dataset")
        log_model_metrics(client, run_id, model.model_id, values, data, step)
    for point in spec.get("checkpoints", []):
        _record_checkpoint(client, experiment_id, run_id, spec, point)
    return model.model_id


def _record_checkpoint(client, experiment_id, run_id, spec, point: dict[str, Any]) -> None:
    from mlflow.entities import LoggedModelStatus

    tags = {**(spec.get("tags") or {}), CHECKPOINT_TAG: point["path"]}
    record = f"{spec['record_id']}-step-{point['step']}"
    name = f"{spec['name']}-step-{point['step']}"
    ckpt = _create(client, experiment_id, run_id, name, record, point["step"], tags)
    if ckpt.status == LoggedModelStatus.READY:
        return
    values = point.get("metrics") or {}
    if values:
        log_model_metrics(client, run_id, ckpt.model_id, values, spec.get("dataset"), point["step"])
    client.finalize_logged_model(ckpt.model_id, LoggedModelStatus.READY)


def checkpoints(folder: Path, history: list[dict[str, float]], root: Path) -> list[dict]:
    """Each ``step-*`` checkpoint kept in ``folder`` with the numbers evaluated at its step."""
    by_step = {int(r["step"]): r for r in history if "step" in r}
    out = []
    for path in sorted(Path(folder).glob("step-*")):
        try:
            step = int(path.name.removeprefix("step-"))
        except ValueError:
            continue  # a temporary or foreign folder
        row = by_step.get(step, {})
        values = {k: float(v) for k, v in row.items() if k.startswith("val_")}
        out.append({"step": step, "path": path.relative_to(root).as_posix(), "metrics": values})
    return out
