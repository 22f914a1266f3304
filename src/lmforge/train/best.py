"""Fine-tuning until the task is learned: the step budget an epochs budget means, early stopping
on a validation metric, and the best evaluation's weights (what the step writes and registers).

- ``budget_steps``: ``ceil(max_epochs x train records / global batch)``, capped by ``max_steps``
  when that is set (``lmforge.train.data.GlobalBatchSampler`` reads the training split as a
  stream of epochs, so a fractional epoch is a real budget too);
- ``BestKeeper``: what ``lmforge.train.loop.fit`` consults at each evaluation. It keeps the best
  evaluation's weights (rank 0, on CPU), counts the evaluations since, and says when ``patience``
  of them passed without improvement. Its state is a function of the loop's history, which the
  checkpoints hold, so a resumed run knows its best step and whether it had stopped; the best
  weights are written beside the checkpoints (``best-step-<N>.safetensors``) before each
  checkpoint that needs them, so a resumed run finds them.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.config import FinetuneConfig
from lmforge.errors import TrainingError
from lmforge.metrics import greater_is_better
from lmforge.train.distributed import Runtime, broadcast_object
from lmforge.train.parallel import full_state_dict

BEST_PREFIX = "best-step-"


def budget_steps(cfg: FinetuneConfig, n_train: int, world_size: int) -> int:
    """Optimizer steps of the run: the epochs budget, capped by ``max_steps`` (0: no cap)."""
    global_batch = cfg.micro_batch_size * cfg.grad_accum_steps * world_size
    caps = [cfg.max_steps] if cfg.max_steps > 0 else []
    if cfg.max_epochs > 0:
        caps.append(max(1, math.ceil(cfg.max_epochs * n_train / global_batch)))
    return min(caps)  # the config's check makes sure one of the two is set


def steps_to_epochs(steps: int, cfg: FinetuneConfig, n_train: int, world_size: int) -> float:
    """Passes over the training split that ``steps`` optimizer steps make."""
    return steps * cfg.micro_batch_size * cfg.grad_accum_steps * world_size / max(n_train, 1)


def budgeted(cfg: FinetuneConfig, n_train: int, world_size: int) -> FinetuneConfig:
    """``cfg`` with ``max_steps`` the run's step count (what the loop and its schedule read)."""
    return replace(cfg, max_steps=budget_steps(cfg, n_train, world_size), max_epochs=0.0)


def monitored(cfg: FinetuneConfig) -> str:
    """The metric early stopping and the best checkpoint go by (``finetune.monitor``)."""
    if cfg.monitor != "auto":
        return cfg.monitor
    return "val_loss" if cfg.task == "sft" else "val_macro_f1"


def kept_eval(history: list[dict[str, float]], keeper: BestKeeper | None) -> dict[str, float]:
    """The evaluation of the weights written: the best step's, else the last."""
    evals = [r for r in history if "val_loss" in r]
    best = keeper.best_step if keeper is not None else None
    return ([r for r in evals if int(r["step"]) == best] or evals or [{}])[-1]


@dataclass
class BestKeeper:
    """The best evaluation so far by ``monitor`` and its weights; see the module doc."""

    monitor: str
    patience: int  # evaluations without improvement before stopping; 0: never stop early
    best_step: int | None = None
    best_value: float | None = None
    best_loss: float | None = None  # the best evaluation's val_loss: breaks a tie on the monitor
    since_best: int = 0  # evaluations since the best one
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # rank 0 only
    stopped_at: int | None = None  # the step early stopping ended the run at

    @property
    def maximise(self) -> bool:
        return greater_is_better(self.monitor)

    def _better(self, value: float, loss: float | None) -> bool:
        """Better on the monitor; on a tie (macro-F1 moves in steps of a few records on a small
        validation split), a lower validation loss is the better model."""
        if not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        if value == self.best_value and loss is not None and self.best_loss is not None:
            return loss < self.best_loss
        return value > self.best_value if self.maximise else value < self.best_value

    def _value(self, row: dict[str, float]) -> float:
        if self.monitor not in row:
            raise TrainingError(
                f"finetune.monitor: {self.monitor} is not among what this task's evaluation "
                f"reports ({', '.join(sorted(k for k in row if k.startswith('val_')))}); set "
                "finetune.monitor to one of those, or auto"
            )
        return float(row[self.monitor])

    def _count(self, step: int, row: dict[str, float]) -> bool:
        """Take one evaluation into account; True when it is the new best."""
        loss = row.get("val_loss") if self.monitor != "val_loss" else None
        if self._better(self._value(row), loss):
            self.best_step, self.best_value, self.since_best = step, self._value(row), 0
            self.best_loss = loss
            return True
        self.since_best += 1
        return False

    @property
    def exhausted(self) -> bool:
        """``patience`` evaluations in a row did not improve on the best."""
        return self.patience > 0 and self.since_best >= self.patience

    def observe(self, step: int, row: dict[str, float], model: nn.Module) -> None:
        """Every rank, after each evaluation (``row``: the reduced metrics, the same on every
        rank): a new best's weights are gathered (a collective) and kept on rank 0."""
        if self._count(step, row):
            state = full_state_dict(model)
            # Clones: on CPU the state dict shares storage with the training weights.
            self.state = {k: v.detach().clone().contiguous() for k, v in state.items()}
        if self.exhausted:
            self.stopped_at = step

    def reason(self, steps: int) -> str:
        """Why the run ended, in words (metrics.json, MLflow)."""
        if self.stopped_at is not None:
            return (
                f"early stop at step {self.stopped_at}: {self.monitor} did not improve for "
                f"{self.patience} evaluations (best {self.best_value:.4g} at step {self.best_step})"
            )
        return f"budget reached: {steps} steps"

    # ---------------------------------------------------------------------- across resumes

    def persist(self, folder: Path, rt: Runtime) -> None:
        """Rank 0, before a checkpoint: the best weights on disk beside it (once per best)."""
        if not rt.is_main or self.best_step is None or self.state is None:
            return
        path = folder / f"{BEST_PREFIX}{self.best_step:08d}.safetensors"
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".tmp-{path.name}")
            save_file(self.state, str(tmp), metadata={"monitor": self.monitor})
            os.replace(tmp, path)

    def forget_older(self, folder: Path, rt: Runtime) -> None:
        """Rank 0, once the checkpoint that refers to the newest best is written: older bests
        go (until then a crash would resume from a checkpoint that needs them)."""
        if not rt.is_main or self.best_step is None:
            return
        for other in folder.glob(f"{BEST_PREFIX}*.safetensors"):
            if _step_of(other) < self.best_step:
                other.unlink(missing_ok=True)

    def resume(self, history: list[dict[str, float]], folder: Path | None, rt: Runtime) -> None:
        """Every rank, after loading a checkpoint: the best and the count since, from the
        history the checkpoint holds; the best's weights from beside it (rank 0)."""
        for row in history:  # with this run's patience, which may differ from the last's
            if self.monitor in row:
                self._count(int(row["step"]), row)
                self.stopped_at = int(row["step"]) if self.exhausted else None
        if self.best_step is None:
            return
        path = None if folder is None else folder / f"{BEST_PREFIX}{self.best_step:08d}.safetensors"
        found = broadcast_object(path is not None and path.is_file() if rt.is_main else None)
        if found:
            if rt.is_main:
                self.state = load_file(str(path))
            return
        if rt.is_main:  # e.g. an older checkpoint of a shortened run: its best was removed
            print(
                f"the best weights of step {self.best_step} ({self.monitor} "
                f"{self.best_value:.4g}) are not beside the checkpoint; the best is tracked "
                "again from the evaluations to come",
                file=sys.stderr,
                flush=True,
            )
        self.best_step, self.best_value, self.since_best, self.stopped_at = None, None, 0, None


def _step_of(path: Path) -> int:
    try:
        return int(path.name.removeprefix(BEST_PREFIX).split(".")[0])
    except ValueError:
        return -1
