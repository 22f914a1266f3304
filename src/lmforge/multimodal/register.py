"""Register the image-text model: an ``image-text-to-text`` version of ``multimodal.model_name``
with the alias ``register.challenger_alias``, only when its evaluation passed the gate.

The model folder is logged with MLflow's transformers flavour from its path (copied, not
loaded): weights in safetensors, configs, tokenizer and processor as JSON, so the version passes
``lmforge.registry.loading.check_model_files`` like every other model, and loading it back runs
no code from the registry (``load_registered``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lmforge.config import Config
from lmforge.errors import DataError, RegistryError
from lmforge.outputs import write_json

TASK = "image-text-to-text"


def _report(evaluation_dir: Path, model_dir: Path) -> dict:
    path = Path(evaluation_dir) / "report.json"
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no evaluation; run lmforge image-evaluate first") from None
    if Path(report["model_dir"]).resolve() != Path(model_dir).resolve():
        raise RegistryError(
            f"{path}: evaluates {report['model_dir']}, not {model_dir}; evaluate the model "
            "being registered (lmforge image-evaluate --model ...)"
        )
    if not report["gate"]["passed"]:
        gate = report["gate"]
        raise RegistryError(
            f"{path}: the gate failed ({gate['metric']} = {gate['value']:.3f}, needs more than "
            f"{gate['min_gain']}); nothing registered. Train longer or lower "
            "multimodal.eval.min_recall_gain"
        )
    return report


def register_multimodal(cfg: Config, model_dir: Path, evaluation_dir: Path, out_dir: Path):
    """Log and register ``model_dir`` (module doc); writes ``out_dir/registered.json``."""
    import mlflow

    from lmforge import tracking
    from lmforge.model_logging import requirements
    from lmforge.registry.compat import transformers5_checkpoint_compat

    report = _report(evaluation_dir, model_dir)
    client = tracking.client(cfg)
    name = cfg.multimodal.model_name
    metrics = {f"multimodal.{k}": float(v) for k, v in report["model"].items()}
    with tracking.stage_run(cfg, "register", sections=("multimodal",)) as run:
        with transformers5_checkpoint_compat():
            info = mlflow.transformers.log_model(
                str(model_dir),  # a path: copied, not loaded
                name="model",
                task=TASK,
                pip_requirements=requirements(),
            )
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        version = mlflow.register_model(info.model_uri, name)
        client.set_registered_model_alias(name, cfg.register.challenger_alias, version.version)
        client.set_model_version_tag(name, version.version, "lmforge.task", TASK)
    result = {
        "name": name,
        "version": version.version,
        "alias": cfg.register.challenger_alias,
        "run_id": run.info.run_id,
        "task": TASK,
        "recall_at_1": report["model"]["recall_at_1"],
        "text_only_recall_at_1": report["text_only"]["recall_at_1"],
    }
    write_json(Path(out_dir) / "registered.json", result)
    return result


def load_registered(cfg: Config, name: str, version: str):
    """``(model, processor)`` of ``models:/NAME/VERSION``: downloaded, checked, then loaded."""
    from lmforge import tracking
    from lmforge.multimodal.model import load_vlm
    from lmforge.registry.loading import checked_version

    with checked_version(tracking.client(cfg), name, version, "lmforge-vlm-") as checked:
        return load_vlm(checked.model_dir, f"models:/{name}/{version}")
