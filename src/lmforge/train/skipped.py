"""Pretraining skipped: ``finetune.base_model`` is set and ``pretrain.init_from`` is not.

Fine-tuning then starts from the user's model and never reads lmforge's own LM, so the pretrain
stage trains none. ``skip_pretrain(cfg, out_dir)`` (what ``lmforge pretrain`` and the Kubeflow
pretrain step call before launching anything) writes instead, each part atomically:

- ``model/skipped.json``: ``{"skipped": true, "reason", "base_model"}`` and no weights (DVC
  needs the stage's declared output to exist);
- ``metrics.json``: the same record (DVC metrics; no numbers, since nothing was measured);
- ``plots/loss.csv``: the header only (a declared DVC plot).

``lm_skipped(cfg, pretrained_dir)`` tells evaluate and register that there is no LM of this run
to score or register. Torch-free: the CLI imports it on its way to the launcher.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.errors import DataError
from lmforge.outputs import atomic_output_dir, write_json

MARKER = "skipped.json"
LOSS_HEADER = "step,train_loss,val_loss\n"  # the columns of a trained run's loss.csv


@dataclass
class PretrainSkipped:
    skipped: bool
    reason: str
    base_model: str
    model_dir: str


def skip_reason(cfg: Config) -> str | None:
    """Why this config pretrains nothing, or None when it pretrains."""
    base, init = cfg.finetune.base_model, cfg.pretrain.init_from  # both read: DVC params
    if base is None or init is not None:
        return None
    return (
        f"finetune.base_model is set ({base}): finetune starts from that model, so lmforge's "
        "own LM is not pretrained in this run (set finetune.base_model to null to pretrain it, "
        "or pretrain.init_from to continue pretraining a model)"
    )


def skip_pretrain(cfg: Config, out_dir: Path) -> PretrainSkipped | None:
    """Write the skipped output (module doc) when ``skip_reason`` says so; else None."""
    reason = skip_reason(cfg)
    if reason is None:
        return None
    out_dir = Path(out_dir)
    record = {"skipped": True, "reason": reason, "base_model": cfg.finetune.base_model}
    with atomic_output_dir(out_dir / "model") as tmp:  # replaces an earlier run's weights
        (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    with atomic_output_dir(out_dir / "plots") as plots:
        (plots / "loss.csv").write_text(LOSS_HEADER)
    write_json(out_dir / "metrics.json", record)
    return PretrainSkipped(**record, model_dir=str(out_dir / "model"))


def read_marker(pretrained_dir: Path) -> dict[str, Any] | None:
    """The ``skipped.json`` record of a pretrain output, or None when it holds a model."""
    path = Path(pretrained_dir) / "model" / MARKER
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); run the pretrain stage again") from None
    if not isinstance(record, dict) or not record.get("reason"):
        raise DataError(f"{path}: not a record lmforge wrote; run the pretrain stage again")
    return record


def lm_skipped(cfg: Config, pretrained_dir: Path | None) -> str | None:
    """Why there is no pretrained LM of this run (None: there is one): this config skips
    pretraining, or the pretrain output says it was skipped."""
    reason = skip_reason(cfg)
    if reason is not None or pretrained_dir is None:
        return reason
    marker = read_marker(pretrained_dir)
    return None if marker is None else str(marker["reason"])
