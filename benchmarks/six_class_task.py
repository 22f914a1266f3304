"""A real task nobody on the project wrote, trained with the defaults: Debian package summaries
labelled with their archive section (devel, games, libs, net, python, utils), the task issue 29
was reported on.

The records come from this machine's APT lists (``apt-cache dumpavail``: package registry
metadata, nothing downloaded): 500 packages a section, chosen by a hash of the package name,
one record a package (its one-line summary), written as a CSV with its own column names. The
chain's own functions then run it exactly as ``dvc repro`` would with these overrides: validate
(the shipped corpus beside the task), augment, finetune from a pretrained decoder (the default
``finetune`` settings: epochs budget, early stopping, best checkpoint) and the same fine-tuning
from random weights (the baseline), both scored with ``lmforge.evaluate``'s ``classify``.

    .venv/bin/python benchmarks/six_class_task.py --pretrained outputs/pretrain

Writes ``benchmarks/results/six_class.json``, one entry a set of ``--set`` overrides (with the
finetune stage's ``metrics.json`` and its learning curve, ``plots/loss.csv``); the figures are
in ``docs/finetune.md``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from lmforge.config import load_config
from lmforge.data.augment import augment
from lmforge.data.labels import task_labels
from lmforge.data.validate import validate
from lmforge.evaluate import classify, load_classifier, scores
from lmforge.train.finetune import finetune, read_labelled

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("devel", "games", "libs", "net", "python", "utils")
PER_SECTION = 500
OVERRIDES = [
    "data.labelled_file=labelled/sections.csv",
    "data.labelled_format=csv",
    "data.labelled_text_field=summary",
    "data.labelled_id_field=package",
    "data.label_field=section",
    "data.labels=[]",
]


def packages() -> list[dict[str, str]]:
    """One record a package of the six sections: name, section (without its component) and
    the description's first line."""
    text = subprocess.run(
        ["apt-cache", "dumpavail"], check=True, capture_output=True, text=True
    ).stdout
    seen: dict[str, dict[str, str]] = {}
    for stanza in text.split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(": ")
            if sep and not line.startswith(" "):
                fields[key] = value
        section = fields.get("Section", "").rpartition("/")[2]
        if section in SECTIONS and fields.get("Description") and "Package" in fields:
            seen.setdefault(
                fields["Package"],
                {
                    "package": fields["Package"],
                    "summary": fields["Description"],
                    "section": section,
                },
            )
    return list(seen.values())


def write_task(path: Path) -> dict[str, int]:
    by_section: dict[str, list[dict[str, str]]] = {s: [] for s in SECTIONS}
    for rec in packages():
        by_section[rec["section"]].append(rec)
    chosen = []
    for recs in by_section.values():
        recs.sort(key=lambda r: hashlib.sha256(r["package"].encode()).hexdigest())
        chosen += recs[:PER_SECTION]
    chosen.sort(key=lambda r: hashlib.sha256(r["package"].encode()).hexdigest())
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["package", "summary", "section"])
        writer.writeheader()
        writer.writerows(chosen)
    return {s: min(len(r), PER_SECTION) for s, r in by_section.items()}


def macro_f1(cfg, model_dir: Path, rows: list[dict], labels: list[str]) -> float:
    model, tokenizer = load_classifier(model_dir)
    y = np.array([labels.index(r["label"]) for r in rows])
    pred = classify(model, tokenizer, [r["text"] for r in rows], labels, cfg)
    return scores(y, pred, len(labels))["macro_f1"]


def curve(loss_csv: Path) -> list[dict[str, str]]:
    with loss_csv.open() as f:
        return list(csv.DictReader(f))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pretrained", type=Path, default=ROOT / "outputs" / "pretrain")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copytree(ROOT / "data" / "corpus", work / "data" / "corpus")
        counts = write_task(work / "data" / "labelled" / "sections.csv")
        cfg = load_config(ROOT / "params.yaml", [*OVERRIDES, *args.overrides])
        validate(cfg, work / "data", work / "validated")
        augment(cfg, work / "validated", work / "augmented")
        finetune(cfg, args.pretrained, work / "augmented", work / "finetune")
        labelled = work / "augmented" / "labelled"
        labels = task_labels(cfg, labelled)
        splits = {s: read_labelled(labelled / f"{s}.jsonl", labels) for s in ("validation", "test")}
        train = read_labelled(labelled / "train.jsonl", labels)
        majority = max(labels, key=[r["label"] for r in train].count)
        result = {
            "records_per_section": counts,
            "train_records": len(train),
            "labels": labels,
            "overrides": [*OVERRIDES, *args.overrides],
            "finetune_metrics": json.loads((work / "finetune" / "metrics.json").read_text()),
            "curve": curve(work / "finetune" / "plots" / "loss.csv"),
        }
        for split, rows in splits.items():
            y = np.array([labels.index(r["label"]) for r in rows])
            result[split] = {
                "records": len(rows),
                "fine_tuned": macro_f1(cfg, work / "finetune" / "model", rows, labels),
                "from_scratch": macro_f1(cfg, work / "finetune" / "baseline", rows, labels),
                "majority": scores(y, np.full_like(y, labels.index(majority)), len(labels))[
                    "macro_f1"
                ],
            }
    import machine  # benchmarks/machine.py: what the figures were measured on

    result["machine"] = machine.describe()
    # One entry a set of overrides (a rerun replaces its own), as benchmarks/transfer.py keeps.
    out = ROOT / "benchmarks" / "results" / "six_class.json"
    runs = json.loads(out.read_text()) if out.is_file() else {}
    runs[" ".join(args.overrides) or "default"] = result
    out.write_text(json.dumps(runs, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("validation", "test")}, indent=2))


if __name__ == "__main__":
    main()
