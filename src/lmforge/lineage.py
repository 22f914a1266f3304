"""Lineage in MLflow's own fields: data as run inputs, models as LoggedModels, versions on them.

- ``dvc_md5(path)``: the md5 DVC records for a file or folder (a folder's is DVC's ``.dir`` hash:
  the md5 of its sorted ``[{"md5", "relpath"}]`` listing), so the digest MLflow shows for a
  dataset is the one in ``dvc.lock`` / the DVC cache, and a KFP task (no DVC) computes the same;
- ``dataset_input(record)``: the MLflow entity a run logs as an input (``log_inputs``) for a
  ``lmforge.tracking.dataset`` record (its digest, its source: the path as DVC names it and the
  git commit, its size);
- ``log_model_metrics``: numbers of a run that belong to one LoggedModel (and dataset);
- ``trained_models(step_dir)``: the LoggedModel ids a training step recorded in its
  ``metrics.json`` (``tracking.models``), so evaluate and register find the model a run trained;
- ``version_model_id(version)``: the LoggedModel behind a registered version: its ``model_id``
  field, or the ``models:/<model_id>`` source (the SQL registry does not store the field); None
  for a version registered before models were logged by their training run.

It imports nothing of lmforge: the training tracker uses it (``lmforge.registry.provenance``
reads a version's lineage and metrics for the gate and deploy).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from pathlib import Path
from typing import Any

# The LoggedModels' names in their training runs (pretrain; finetune; finetune with task sft).
LM_MODEL = "language_model"
CLASSIFIER_MODEL = "classifier"
BASELINE_MODEL = "baseline_classifier"
SFT_MODEL = "sft_model"
DATASET_SOURCE_TYPE = "dvc"
CONTEXT_TAG = "mlflow.data.context"  # MLflow's input tag: training, validation, test
_CHUNK = 1 << 20
_MODEL_URI = re.compile(r"^models:/(m-[0-9a-f]+)$")


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with Path(path).open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def dvc_md5(path: Path) -> str:
    """DVC 3's md5 of ``path``: a file's content md5, a folder's ``.dir`` listing hash."""
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    entries = [
        {"md5": file_md5(f), "relpath": f.relative_to(path).as_posix()}
        for f in sorted(path.rglob("*"))
        if f.is_file()
    ]
    listing = json.dumps(sorted(entries, key=lambda e: e["relpath"]), sort_keys=True)
    return hashlib.md5(listing.encode(), usedforsecurity=False).hexdigest() + ".dir"


def dataset_input(record: dict[str, Any]):
    from mlflow.entities import Dataset, DatasetInput, InputTag

    ds = Dataset(
        name=record["name"],
        digest=record["digest"],
        source_type=DATASET_SOURCE_TYPE,
        source=record["source"],
        profile=record.get("profile"),
    )
    return DatasetInput(ds, [InputTag(CONTEXT_TAG, record["context"])])


def _is_number(value: Any) -> bool:
    # tracking.is_number's rule, here so that this module imports nothing of lmforge: the
    # training tracker uses it, and tracking uses the tracker.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def log_datasets(client, run_id: str, records: list[dict[str, Any]]) -> None:
    client.log_inputs(run_id, datasets=[dataset_input(r) for r in records])


def trained_models(step_dir: Path) -> dict[str, str]:
    """``{name: model_id}`` of the LoggedModels a training step logged (empty when it logged
    none: a folder written by hand or by lmforge before models were logged where trained)."""
    try:
        metrics = json.loads((Path(step_dir) / "metrics.json").read_text())
        models = metrics["tracking"]["models"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {str(k): str(v) for k, v in models.items()} if isinstance(models, dict) else {}


def unsent_models(step_dir: Path) -> int:
    """How many model records a training step left in its tracking buffer (not logged yet)."""
    try:
        metrics = json.loads((Path(step_dir) / "metrics.json").read_text())
        return int(metrics["tracking"]["unsent_by_kind"].get("model", 0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0


def version_model_id(version) -> str | None:
    """The LoggedModel id of a registered version (None: registered by lmforge before 3.x
    lineage, from a run's artifact folder)."""
    found = getattr(version, "model_id", None)
    if found:
        return str(found)
    match = _MODEL_URI.match(str(getattr(version, "source", "") or ""))
    return match.group(1) if match else None


def existing_model(client, model_id: str):
    """The LoggedModel ``model_id`` in this store, or None (another store's id, or deleted)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_logged_model(model_id)
    except MlflowException as exc:
        if exc.get_http_status_code() == 404 or "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code):
            return None
        raise


def log_model_metrics(
    client,
    run_id: str,
    model_id: str | None,
    values: dict[str, float],
    data: dict | None,
    step: int = 0,
) -> None:
    """``values`` as metrics of the run that belong to LoggedModel ``model_id`` (shown on that
    model's page), measured on ``data`` (a ``dataset`` record). Only numbers are logged; a
    model unknown to this store gets none (its numbers stay in the run's own metrics)."""
    from mlflow.entities import Metric

    if not model_id or existing_model(client, model_id) is None:
        return
    now = int(time.time() * 1000)
    name, digest = (data["name"], data["digest"]) if data else (None, None)
    metrics = [
        Metric(k, float(v), now, int(step), model_id, name, digest, run_id)
        for k, v in values.items()
        if _is_number(v)
    ]
    client.log_batch(run_id, metrics=metrics, synchronous=True)


TEST_PREFIX = "test_"  # evaluate's per-model metric names: test_accuracy, test_perplexity...
