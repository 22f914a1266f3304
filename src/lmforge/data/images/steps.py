"""The image-data steps as the CLI, DVC and the KFP components call them: the whole config in,
``multimodal.data`` to the step function, each run tracked in MLflow as the text data stages are
(``lmforge.data.track``: a nested run, the section's params, the metrics, report.json)."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.config import Config
from lmforge.data.images.augment import ImageAugmentResult, augment_images
from lmforge.data.images.sources import captions_path
from lmforge.data.images.validate import ImageValidationResult, validate_images
from lmforge.data.track import log_outputs, tracked


def _log_section(cfg: Config) -> None:
    import mlflow

    values = cfg.multimodal.data.__dict__
    mlflow.log_params({f"multimodal.data.{k}": str(v)[:500] for k, v in values.items()})


def _log(out_dir: Path) -> None:
    metrics = json.loads((Path(out_dir) / "metrics.json").read_text())
    log_outputs(metrics, [Path(out_dir) / "report.json"])


def image_validate(cfg: Config, data_dir: Path, out_dir: Path) -> ImageValidationResult:
    captions_path(cfg.multimodal.data, data_dir)  # a wrong path is refused before any run starts
    with tracked(cfg, "image-validate", sections=(), inputs={"raw-images": Path(data_dir)}):
        _log_section(cfg)
        result = validate_images(cfg.multimodal.data, data_dir, out_dir)
        _log(out_dir)
    return result


def image_augment(cfg: Config, validated_dir: Path, out_dir: Path) -> ImageAugmentResult:
    with tracked(cfg, "image-augment", sections=()):
        _log_section(cfg)
        result = augment_images(cfg.multimodal.data, validated_dir, out_dir, cfg.augment)
        _log(out_dir)
    return result
