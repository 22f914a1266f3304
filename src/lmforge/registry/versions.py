"""What the classifier and LM registration (``registration``) and the SFT one (``sft``, which
``registration`` dispatches to) share, kept apart so neither imports the other's importer: the
version a register step reports (``RegisteredVersion``) and the check that a step wrote a saved
model folder. Registering itself is ``lmforge.registry.trained``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import RegistryError


@dataclass
class RegisteredVersion:
    name: str
    version: str
    model_uri: str  # models:/NAME/VERSION
    run_id: str
    alias: str


def saved_model_dir(stage_dir: Path, what: str) -> Path:
    model_dir = stage_dir / "model"
    if not (model_dir / "config.json").is_file() or not (model_dir / "tokenizer.json").is_file():
        raise RegistryError(
            f"{model_dir}: no {what} model directory (config.json and tokenizer.json expected); "
            f"run the stage that writes {stage_dir} first"
        )
    return model_dir
