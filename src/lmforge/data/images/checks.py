"""Great Expectations on the caption table about to be written (one row per stored pair), as
the text path checks its record profiles (``lmforge.data.expectations``: the same ephemeral GX
context, checkpoints and report items). lmforge's own checks have refused bad rows already;
this suite is the independent check of what goes downstream, and it names each offender's
caption file and row."""

from __future__ import annotations

from typing import Any

from lmforge.config.image_data import ImageDataConfig
from lmforge.data.expectations import _checkpoint, _condense, _run, failure_message
from lmforge.data.images.pairs import SPLITS
from lmforge.errors import DataError


def caption_suite(cfg: ImageDataConfig) -> list[tuple[str, dict[str, Any]]]:
    between = "ExpectColumnValuesToBeBetween"
    spec: list[tuple[str, dict[str, Any]]] = [
        ("ExpectTableRowCountToBeBetween", {"min_value": 1}),
        ("ExpectColumnValuesToNotBeNull", {"column": "id"}),
        ("ExpectColumnValuesToBeUnique", {"column": "id"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "caption"}),
        (
            between,
            {
                "column": "n_chars",
                "min_value": cfg.min_caption_chars,
                "max_value": cfg.max_caption_chars,
            },
        ),
        (between, {"column": "width", "min_value": cfg.min_side, "max_value": cfg.max_side}),
        (between, {"column": "height", "min_value": cfg.min_side, "max_value": cfg.max_side}),
        ("ExpectColumnValuesToBeInSet", {"column": "split", "value_set": list(SPLITS)}),
    ]
    if cfg.pii == "mask":
        spec.append((between, {"column": "pii_left", "max_value": 0}))
    return spec


def run_caption_suite(
    cfg: ImageDataConfig, rows: list[dict[str, Any]], data_dir: str
) -> dict[str, Any]:
    """Run the suite on ``rows``; the report entry, or ``DataError`` naming the offenders."""
    import pandas as pd

    columns = ["id", "file", "line", "caption", "n_chars", "pii_left", "width", "height", "split"]
    frame = pd.DataFrame(rows, columns=columns)
    raw = _run(_checkpoint(caption_suite(cfg), cfg.failed_examples), frame)
    previews = {r["id"]: r["caption"] for r in rows}
    items = _condense(raw, previews, cfg.failed_examples)
    expectations = [{k: v for k, v in i.items() if k != "_denominator"} for i in items]
    entry = {
        "kind": "captions",
        "records": len(rows),
        "chars": int(frame["n_chars"].sum()) if rows else 0,
        "success": all(e["success"] for e in expectations),
        "evaluated": len(expectations),
        "failed": sum(not e["success"] for e in expectations),
        "expectations": expectations,
    }
    if not entry["success"]:
        message = failure_message({"datasets": {"captions": entry}}, data_dir)
        raise DataError(message.replace("`data` section", "`multimodal.data` section"))
    return entry
