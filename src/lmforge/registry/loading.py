"""Load a registered classifier without running code from the registry.

``mlflow.transformers.load_model`` passes ``trust_remote_code=True`` when the MLmodel file names
a class that transformers does not have: whoever can write to the registry could then run
Python in every step that loads the champion. Here the version's files are downloaded and loaded
with transformers' own classes only, remote code disabled; a version whose MLmodel, model
config or tokenizer config names a class outside transformers (or an ``auto_map`` of custom
code) is refused before anything is loaded.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from lmforge.errors import RegistryError

MODEL_SUBDIR = "model"  # MLflow's transformers flavour: the weights and config
TOKENIZER_SUBDIR = "components/tokenizer"


def _is_transformers_class(name: Any) -> bool:
    import transformers

    return isinstance(name, str) and name.isidentifier() and hasattr(transformers, name)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{path}: unreadable ({exc})") from None


def check_no_remote_code(root: Path, what: str) -> tuple[Path, Path]:
    """(model dir, tokenizer dir) of a downloaded transformers-flavour model; refuse custom code."""
    import yaml

    try:
        mlmodel = yaml.safe_load((root / "MLmodel").read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RegistryError(f"{what}: no readable MLmodel file ({exc})") from None
    flavor = (mlmodel.get("flavors") or {}).get("transformers")
    if not isinstance(flavor, dict):
        raise RegistryError(f"{what}: not a transformers-flavour model (MLmodel has no flavour)")
    model_dir = root / str(flavor.get("model_binary") or MODEL_SUBDIR)
    tokenizer_dir = root / TOKENIZER_SUBDIR
    if not tokenizer_dir.is_dir():  # saved without components: the tokenizer sits with the model
        tokenizer_dir = model_dir
    # What MLflow's loader would resolve (a class transformers lacks means trust_remote_code).
    named = {
        "MLmodel pipeline_model_type": flavor.get("pipeline_model_type"),
        "MLmodel instance_type": flavor.get("instance_type", "Pipeline"),
    }
    for component in flavor.get("components") or []:
        named[f"MLmodel {component}_type"] = flavor.get(f"{component}_type")
    config = _read_json(model_dir / "config.json")
    for i, arch in enumerate(config.get("architectures") or []):
        named[f"config.json architectures[{i}]"] = arch
    tok_config_path = tokenizer_dir / "tokenizer_config.json"
    tok_config = _read_json(tok_config_path) if tok_config_path.is_file() else {}
    if "tokenizer_class" in tok_config:
        named["tokenizer_config.json tokenizer_class"] = tok_config["tokenizer_class"]
    foreign = [
        f"{where} = {cls!r}" for where, cls in named.items() if not _is_transformers_class(cls)
    ]
    for where, cfg in (("config.json", config), ("tokenizer_config.json", tok_config)):
        if cfg.get("auto_map"):
            foreign.append(f"{where} auto_map = {cfg['auto_map']!r}")
    if flavor.get("code"):
        foreign.append(f"MLmodel code = {flavor['code']!r}")
    if foreign:
        raise RegistryError(
            f"{what}: refused: it names classes outside transformers ({'; '.join(foreign)}), "
            "which would run code from the registry; register a model saved by lmforge finetune"
        )
    return model_dir, tokenizer_dir


def load_classifier_version(client, name: str, version: str) -> tuple[Any, Any]:
    """(model, tokenizer) of ``models:/NAME/VERSION``, loaded with remote code disabled."""
    import mlflow
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    what = f"models:/{name}/{version}"
    with tempfile.TemporaryDirectory(prefix="lmforge-champion-") as tmp:
        root = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=what, dst_path=tmp, tracking_uri=client.tracking_uri
            )
        )
        model_dir, tokenizer_dir = check_no_remote_code(root, what)
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, trust_remote_code=False
        )
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
    return model.eval(), tokenizer
