"""A model version as the register step creates it: logged with MLflow's transformers flavour
from its saved directory, registered with lineage and metric tags, and pointed at by the
challenger alias. Shared by the classifier and LM registration (``registration``) and the SFT
one (``sft``), which ``registration`` dispatches to: kept apart so neither imports the other's
importer.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.errors import RegistryError
from lmforge.registry.aliases import METRIC_TAG
from lmforge.registry.compat import transformers5_checkpoint_compat

# Installed distributions the logged models need; pinned explicitly because MLflow's inference
# would otherwise demand torchvision for a transformers model.
MODEL_REQUIREMENTS = ("mlflow", "transformers", "torch", "tokenizers", "safetensors", "numpy")


@dataclass
class RegisteredVersion:
    name: str
    version: str
    model_uri: str  # models:/NAME/VERSION
    run_id: str
    alias: str


def requirements() -> list[str]:
    pins = []
    for dist in MODEL_REQUIREMENTS:
        version = metadata.version(dist).split("+")[0]  # torch 2.13.0+cpu -> the public version
        pins.append(f"{dist}=={version}")
    return pins


def saved_model_dir(stage_dir: Path, what: str) -> Path:
    model_dir = stage_dir / "model"
    if not (model_dir / "config.json").is_file() or not (model_dir / "tokenizer.json").is_file():
        raise RegistryError(
            f"{model_dir}: no {what} model directory (config.json and tokenizer.json expected); "
            f"run the stage that writes {stage_dir} first"
        )
    return model_dir


def log_and_register(
    cfg: Config,
    model_dir: Path,
    *,
    name: str,
    artifact: str,
    task: str,
    example: list[str],
    output_example: Any,
    params: dict[str, Any] | None,
    metrics: dict[str, float],
    tags: dict[str, str],
) -> RegisteredVersion:
    import mlflow
    from mlflow.models import infer_signature

    signature = infer_signature(example, output_example, params=params)
    with transformers5_checkpoint_compat():
        info = mlflow.transformers.log_model(
            str(model_dir),  # a path: MLflow copies the files instead of loading the model
            name=artifact,
            task=task,
            signature=signature,
            input_example=example,
            pip_requirements=requirements(),
        )
    version_tags = {**tags, **{METRIC_TAG + k: repr(float(v)) for k, v in metrics.items()}}
    mv = mlflow.register_model(info.model_uri, name, tags=version_tags)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(name, cfg.register.challenger_alias, mv.version)
    return RegisteredVersion(
        name=name,
        version=str(mv.version),
        model_uri=f"models:/{name}/{mv.version}",
        run_id=mlflow.active_run().info.run_id,
        alias=cfg.register.challenger_alias,
    )
