"""What the pretrain and finetune steps share around the training loop, so they cannot drift:

- ``process_group``: join the group the environment describes; shut it down only if we made it
  (a caller that initialised it, e.g. a test or a launcher, keeps it);
- ``tracked``: the step's MLflow run on rank 0, tolerant (``lmforge.train.tracker``: an outage
  never stops training; what was not sent is buffered in ``out_dir``), ended FAILED on an error;
  other ranks get a tracker that logs nothing;
- ``checkpoint_dir``: ``out_dir/checkpoints`` (one subfolder per model when a step trains more
  than one, e.g. finetune's ``model`` and ``baseline``);
- ``fingerprint``: which checkpoints a run may resume from: the model's shape, the data's
  identity, and the training knobs that define the run (seed, optimizer and schedule shape:
  ``lr``, warmup, betas...). Everything a run can change and still continue is left out:
  ``max_steps`` (the schedule is recomputed for the new length), the split of the batch into
  micro batches and accumulation, the process count and the parallelism (DCP reshards), the
  cadence knobs (``RESUMABLE``), and any other section (``evaluate.*``);
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

# Knobs a run may change and still continue from its checkpoints: how often things happen
# around training (or where, or how fast), how the batch is split over micro batches and
# processes (DCP reshards the weights), and the run's length (the schedule is a function of
# ``max_steps`` and is recomputed, as torchtitan does). ``baseline`` says whether a second model
# trains beside the first. ``lr``, warmup and the rest of the optimizer stay in: a run with
# another ``lr`` starts over, in its own checkpoint folder.
RESUMABLE = frozenset(
    {
        "max_steps",
        "micro_batch_size",
        "grad_accum_steps",
        "parallel",
        "activation_checkpointing",
        "eval_every",
        "eval_batches",
        "log_every",
        "ckpt_every",
        "keep_last",
        "num_threads",
        "compile",
        "device",
        "baseline",
        # Fine-tuning's budget and stopping rule: how long the same run goes on, and which of
        # its evaluations is kept (lmforge.train.best; the history holds every evaluation).
        "max_epochs",
        "early_stopping_patience",
        "monitor",
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


# What lmforge before RESUMABLE left out of the fingerprint: the cadence knobs only.
_LEGACY_LEFT_OUT = RESUMABLE - {
    "max_steps",
    "micro_batch_size",
    "grad_accum_steps",
    "parallel",
    "activation_checkpointing",
}


class Fingerprint(str):
    """A run's resume fingerprint. ``legacy``: what lmforge computed for the same run before
    ``RESUMABLE`` (it hashed every training knob but the cadence ones), so that a checkpoint
    folder written then still resumes when the config is unchanged."""

    legacy: str = ""


def _digest(train: TrainConfig, model: Any, data: Any, left_out: frozenset[str]) -> str:
    keep = {k: v for k, v in asdict(train).items() if k not in left_out}
    blob = json.dumps({"model": model, "train": keep, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fingerprint(train: TrainConfig, model: Any, data: Any) -> Fingerprint:
    """Checkpoints are interchangeable when this matches: ``model`` (its shape, or the identity
    of the weights it starts from), the training section minus ``RESUMABLE``, and ``data``."""
    value = Fingerprint(_digest(train, model, data, RESUMABLE))
    value.legacy = _digest(train, model, data, _LEGACY_LEFT_OUT)
    return value


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
