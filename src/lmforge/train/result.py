"""What a pretraining run reports, in a module without torch: the launcher returns it too and
sits on the CLI's start-up path."""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any


@dataclass
class PretrainResult:
    """The trainer's result; ``metrics.json`` holds exactly these fields."""

    val_loss: float
    val_perplexity: float
    unigram_perplexity: float
    train_loss: float
    steps: int
    tokens_seen: int
    n_params: int
    flops_per_token: float
    tokens_per_s: float
    mfu: float
    peak_memory_bytes: int
    train_seconds: float
    world_size: int
    resumed_from: int | None
    model_dir: str
    precision: str = ""  # what training computed in (fp32 | bf16), ``auto`` resolved
    precision_reason: str = ""  # why (lmforge.train.precision)
    mkl_shim: str = ""  # CPU: whether MKL took its fast path on an AMD CPU (lmforge.mkl_shim)
    # What reached MLflow: run id, sent, unsent by kind, the buffer (train/tracker.py); None
    # when the step did not track (ranks > 0) or for a metrics.json written before it existed.
    tracking: dict[str, Any] | None = None

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(PretrainResult)]

    @classmethod
    def from_mapping(cls, values: dict[str, Any], **extra: Any) -> PretrainResult:
        """The result from ``metrics.json``'s mapping (unknown keys ignored) plus ``extra``."""
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [k for k in required if k not in values]
        if missing:
            raise KeyError(", ".join(missing))
        return cls(**{k: values[k] for k in cls.field_names() if k in values}, **extra)

    @classmethod
    def from_metrics_file(cls, path: Path, **extra: Any) -> PretrainResult:
        return cls.from_mapping(json.loads(Path(path).read_text()), **extra)
