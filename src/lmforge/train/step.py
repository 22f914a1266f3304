"""What the pretrain and finetune steps share around the training loop, so they cannot drift:

- ``process_group``: join the group the environment describes; shut it down only if we made it
  (a caller that initialised it, e.g. a test or a launcher, keeps it);
- ``tracked``: the step's MLflow run on rank 0, tolerant (``lmforge.train.tracker``: an outage
  never stops training; what was not sent is buffered in ``out_dir``), ended FAILED on an error;
  other ranks get a tracker that logs nothing;
- ``checkpoint_dir``: ``out_dir/checkpoints`` (one subfolder per model when a step trains more
  than one, e.g. finetune's ``model`` and ``baseline``);
- ``fingerprint``: which checkpoints a run may resume from: the model's shape, the training
  section minus the cadence knobs (``CADENCE``), and the data's identity. Changing how often
  things are logged, validated or saved, or any other section (``evaluate.*``), still resumes;
- ``write_metrics``: ``metrics.json`` with the tracking summary (what was not logged).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from lmforge.config import Config, TrainConfig
from lmforge.outputs import write_json
from lmforge.train.distributed import Runtime, init_distributed, shutdown
from lmforge.train.tracker import NullTracker, TrainingTracker

# Knobs that change how often things happen around training (or where, or how fast), not the
# weights it produces; ``baseline`` says whether a second model trains beside the first.
CADENCE = frozenset(
    {
        "eval_every",
        "eval_batches",
        "log_every",
        "ckpt_every",
        "keep_last",
        "num_threads",
        "compile",
        "device",
        "baseline",
    }
)


@contextlib.contextmanager
def process_group(tcfg: TrainConfig) -> Iterator[Runtime]:
    owns = not torch.distributed.is_initialized()
    rt = init_distributed(tcfg.device, tcfg.num_threads)
    try:
        yield rt
    finally:
        if owns:
            shutdown()


class tracked:
    """``with tracked(cfg, stage, sections, out_dir, rt) as tracker:``; afterwards
    ``.summary`` says what was sent and what is buffered (empty off rank 0)."""

    def __init__(
        self, cfg: Config, stage: str, sections: tuple[str, ...], out_dir: Path, rt: Runtime
    ):
        self.args = (cfg, stage, sections, Path(out_dir))
        self.is_main = rt.is_main
        self.summary: dict[str, Any] = {}

    def __enter__(self) -> TrainingTracker | NullTracker:
        self.tracker = TrainingTracker(*self.args) if self.is_main else NullTracker()
        return self.tracker

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.summary = self.tracker.close("FAILED" if exc_type else "FINISHED")
        return False


def both(first: Callable | None, second: Callable | None) -> Callable | None:
    """One ``on_log`` calling ``first`` then ``second`` (either may be None)."""
    if first is None or second is None:
        return first or second

    def on_log(step: int, row: dict[str, float]) -> None:
        first(step, row)
        second(step, row)

    return on_log


def checkpoint_dir(out_dir: Path, model: str | None = None) -> Path:
    root = Path(out_dir) / "checkpoints"
    return root / model if model else root


def fingerprint(train: TrainConfig, model: Any, data: Any) -> str:
    """Checkpoints are interchangeable when this matches: ``model`` (its shape, or the identity
    of the weights it starts from), the training section minus ``CADENCE``, and ``data``."""
    keep = {k: v for k, v in asdict(train).items() if k not in CADENCE}
    blob = json.dumps({"model": model, "train": keep, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_identity(*paths: Path) -> dict[str, str]:
    """Name, size and modification time of each file (cheap: weights can be gigabytes)."""
    out = {}
    for path in paths:
        if path.is_file():
            stat = path.stat()
            out[path.name] = f"{stat.st_size}:{stat.st_mtime_ns}"
    return out


def write_metrics(out_dir: Path, result: Any, tracking: dict[str, Any]) -> None:
    """``metrics.json``: the result's fields, and ``tracking`` (sent / unsent / buffer) when the
    step logged to MLflow (rank 0)."""
    values = asdict(result)
    if tracking:
        values["tracking"] = tracking
    write_json(Path(out_dir) / "metrics.json", values)
