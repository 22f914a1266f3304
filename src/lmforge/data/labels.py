"""The classes of the labelled task: listed in ``data.labels``, or taken from the training split.

``validate`` resolves them once (``resolve``) and writes ``labelled/labels.json`` next to the
splits: ``{"labels", "source", "counts": {split: {label: n}}}``; ``augment`` copies it, and
finetune, evaluate and the registry take the classes from it (``task_labels``), so a task whose
labels were derived needs no list in ``params.yaml``. Listed labels keep their order (the model's
ids); derived ones are sorted, so the same training split always gives the same ids.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from lmforge.config import Config, DataConfig
from lmforge.data.expectations import Profile
from lmforge.data.split import SPLITS, split_of
from lmforge.errors import ConfigError, DataError

LABELS_FILE = "labels.json"


def resolve(cfg: DataConfig, prof: Profile) -> dict[str, Any]:
    """The task's classes and their counts per split, from a labelled ``Profile`` (ids and labels
    of every record). With ``data.labels`` empty the classes are the training split's; a label
    found only in validation or test is then an error naming it (listed labels: the suite's
    value-set expectation reports strays)."""
    counts = {split: Counter() for split in SPLITS}
    first_id: dict[tuple[str, str], str] = {}
    for rid, label in prof.ids_and_labels():
        if label is None:
            continue  # a null label: the suite reports it
        split = split_of(rid, cfg.split_salt, cfg.validation_share, cfg.test_share)
        counts[split][label] += 1
        first_id.setdefault((split, label), rid)
    if cfg.labels:
        labels, source = list(cfg.labels), "data.labels"
    else:
        labels, source = sorted(counts["train"]), "training split"
        _check_derived(cfg, labels, counts, first_id)
    return {
        "labels": labels,
        "source": source,
        "counts": {
            split: {lb: counts[split][lb] for lb in sorted(counts[split])} for split in SPLITS
        },
    }


def _check_derived(cfg: DataConfig, labels: list[str], counts, first_id) -> None:
    if len(labels) < 2:
        raise DataError(
            f"data.labels is empty, so the classes come from the labelled training split, which "
            f"has {len(labels)} ({labels}); a classification task needs at least two: add "
            "records of other classes to data.labelled_file, or list data.labels in params.yaml."
        )
    for split in ("validation", "test"):
        unknown = sorted(set(counts[split]) - set(labels))
        if unknown:
            shown = ", ".join(
                f"{lb!r} ({counts[split][lb]} records, e.g. id {first_id[split, lb]!r})"
                for lb in unknown
            )
            raise DataError(
                f"{cfg.labelled_file}: the {split} split has label(s) {shown} that the training "
                f"split does not have; with data.labels empty the classes are the training "
                f"split's {labels}. Add training records of that label, drop or relabel those "
                "records, or list data.labels in params.yaml."
            )
    if cfg.class_share_floor(len(labels)) * len(labels) > 1:
        raise ConfigError(
            f"data.min_class_share: {cfg.min_class_share} for the {len(labels)} labels of the "
            f"training split ({', '.join(labels)}) cannot all hold (at most "
            f"{1 / len(labels):.3g}); lower data.min_class_share in params.yaml."
        )


def task_labels(cfg: Config, labelled_dir: Path) -> list[str]:
    """The classes, in id order, of the labelled splits in ``labelled_dir``: its ``labels.json``
    (written by validate); without one (splits written by hand), the listed ``data.labels``."""
    path = Path(labelled_dir) / LABELS_FILE
    listed = list(cfg.data.labels)
    if not path.is_file():
        if listed:
            return listed
        raise DataError(
            f"{path}: missing; with data.labels empty the classes are recorded there by the "
            "validate stage: run validate and augment first (`dvc repro augment`), or list "
            "data.labels in params.yaml."
        )
    try:
        recorded = json.loads(path.read_text())["labels"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); rerun the validate stage") from None
    if not isinstance(recorded, list) or not all(isinstance(x, str) for x in recorded):
        raise DataError(f"{path}: 'labels' is not a list of strings; rerun the validate stage")
    if listed and listed != recorded:
        raise DataError(
            f"{path}: the splits were validated with labels {recorded}, but data.labels is now "
            f"{listed}; rerun validate and augment (`dvc repro augment`) or restore data.labels."
        )
    return recorded
