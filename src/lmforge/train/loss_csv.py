"""``plots/loss.csv`` of a fine-tuning step: the training and validation loss of each model
trained (``model``, and ``baseline`` when one trains beside it), a row a step. Shared by the
classification and SFT fine-tuning steps.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmforge.train.loop import FitResult


def write_loss_csv(path: Path, runs: dict[str, FitResult]) -> None:
    """One row a step: each variant's losses (the baseline's prefixed ``baseline_``), blank
    where a variant logged none at that step."""
    columns = ["train_loss", "val_loss"]
    rows: dict[int, dict[str, float]] = {}
    for variant, fit_result in runs.items():
        prefix = "" if variant == "model" else "baseline_"
        for row in fit_result.history:
            for key in columns:
                if key in row:
                    rows.setdefault(int(row["step"]), {})[prefix + key] = row[key]
    header = ["step", *columns, *(f"baseline_{c}" for c in columns if "baseline" in runs)]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for step in sorted(rows):
            values = rows[step]
            writer.writerow(
                [step, *("" if values.get(k) is None else f"{values[k]:.5f}" for k in header[1:])]
            )
