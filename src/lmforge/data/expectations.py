"""Great Expectations suites over a per-record profile of each dataset.

Texts are streamed once; each record leaves one small row (id, label or source, length, share of
letters, control characters, a hash of the text, a short preview), so the table GX checks grows
with the number of records, not with the bytes of text. The suites then run as a real GX Core 1.x
checkpoint (ephemeral context, pandas datasource, ExpectationSuite, ValidationDefinition).
GX is imported lazily: it takes seconds, and the CLI must stay fast.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from lmforge.config import DataConfig
from lmforge.data.pii import Allow, find

PREVIEW_CHARS = 60
SHARE_PREFIX = "is_"  # the indicator column of a class: its mean is the class's share
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_NON_LETTER = re.compile(r"[\W\d_]+")
_SPACE = re.compile(r"\s+")
_ASCII_LETTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ASCII_SPACE = b" \t\n\r\x0b\x0c"


def letter_share(text: str) -> float:
    """Letters / non-space characters (0 for a text with none). Byte tricks for ASCII: fast."""
    if text.isascii():
        raw = text.encode("ascii")
        visible = len(raw.translate(None, _ASCII_SPACE))
        letters = len(raw) - len(raw.translate(None, _ASCII_LETTERS))
    else:
        visible = len(_SPACE.sub("", text))
        letters = len(_NON_LETTER.sub("", text))
    return letters / visible if visible else 0.0


@dataclass
class Profile:
    """Column lists of the per-record profile of one dataset (``kind``: corpus or labelled)."""

    kind: str
    labels: list[str] = field(default_factory=list)
    cols: dict[str, list] = field(default_factory=dict)
    chars: int = 0
    # Set: the column ``pii_left`` counts the personal-data matches (not allow-listed) left in
    # each text, and the suite expects 0 (``data.pii`` mask or drop).
    pii: Allow | None = None

    def __post_init__(self):
        names = ["id", "text", "n_chars", "letter_share", "control_chars", "text_hash"]
        names += ["label"] if self.kind == "labelled" else ["source"]
        names += ["pii_left"] if self.pii is not None else []
        self.cols = {n: [] for n in names}

    def add(self, rec: dict[str, Any], pii_left: int | None = None) -> None:
        """One row; ``pii_left`` may be given when the caller has just scanned this very text."""
        text = rec["text"]
        c = self.cols
        c["id"].append(rec["id"])
        if self.kind == "labelled":
            c["label"].append(rec["label"])
        else:
            c["source"].append(rec["source"])
        if text is None:
            c["text"].append(None)
            c["n_chars"].append(None)
            c["letter_share"].append(None)
            c["control_chars"].append(None)
            c["text_hash"].append(None)
            if self.pii is not None:
                c["pii_left"].append(0)
            return
        self.chars += len(text)
        c["text"].append(text[:PREVIEW_CHARS])
        c["n_chars"].append(len(text))
        c["letter_share"].append(round(letter_share(text), 4))
        c["control_chars"].append(len(_CONTROL.findall(text)))
        blob = text.encode("utf-8", "surrogatepass")
        c["text_hash"].append(hashlib.blake2b(blob, digest_size=8).hexdigest())
        if self.pii is not None:
            c["pii_left"].append(len(find(text, self.pii)) if pii_left is None else pii_left)

    def __len__(self) -> int:
        return len(self.cols["id"])

    def frame(self):
        import pandas as pd

        df = pd.DataFrame(self.cols)
        for label in self.labels:  # class shares as means of indicator columns
            df[SHARE_PREFIX + label] = (df["label"] == label).astype(float)
        return df


def suite_spec(
    cfg: DataConfig, kind: str, pii_check: bool = False, labels: list[str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(GX expectation class name, kwargs) for one dataset, from the ``data`` params;
    ``pii_check``: no personal data left in the written texts (column ``pii_left``); ``labels``:
    the task's classes (``lmforge.data.labels``; default ``data.labels``)."""
    labels = list(cfg.labels if labels is None else labels)
    spec: list[tuple[str, dict[str, Any]]] = [
        ("ExpectTableRowCountToBeBetween", {"min_value": 1}),
        ("ExpectColumnValuesToNotBeNull", {"column": "id"}),
        ("ExpectColumnValuesToBeUnique", {"column": "id"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "text"}),
        (
            "ExpectColumnValuesToBeBetween",
            {"column": "n_chars", "min_value": cfg.min_chars, "max_value": cfg.max_chars},
        ),
        ("ExpectColumnValuesToBeBetween", {"column": "control_chars", "max_value": 0}),
        (
            "ExpectColumnValuesToBeBetween",
            {"column": "letter_share", "min_value": cfg.min_alpha_share, "max_value": 1.0},
        ),
        (
            "ExpectColumnProportionOfUniqueValuesToBeBetween",
            {"column": "text_hash", "min_value": 1.0 - cfg.max_duplicate_share, "max_value": 1.0},
        ),
    ]
    if kind == "labelled":
        spec += [
            ("ExpectColumnValuesToNotBeNull", {"column": "label"}),
            ("ExpectColumnValuesToBeInSet", {"column": "label", "value_set": labels}),
        ]
        spec += [
            (
                "ExpectColumnMeanToBeBetween",
                {
                    "column": SHARE_PREFIX + label,
                    "min_value": cfg.min_class_share,
                    "max_value": 1.0,
                },
            )
            for label in labels
        ]
    else:
        spec.append(("ExpectColumnValuesToNotBeNull", {"column": "source"}))
    if pii_check:
        spec.append(("ExpectColumnValuesToBeBetween", {"column": "pii_left", "max_value": 0}))
    return spec


def run_suites(cfg: DataConfig, profiles: dict[str, Profile], stage: str) -> dict[str, Any]:
    """Run one GX checkpoint per dataset; return the report (``success``, per-dataset results)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(f"lmforge-{stage}")
    report: dict[str, Any] = {"stage": stage, "success": True, "datasets": {}}
    for name, prof in profiles.items():
        suite = context.suites.add(gx.ExpectationSuite(name=f"{stage}-{name}"))
        for cls_name, kwargs in suite_spec(cfg, prof.kind, prof.pii is not None, prof.labels):
            suite.add_expectation(getattr(gx.expectations, cls_name)(**kwargs))
        batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe("all")
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{stage}-{name}", data=batch, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"{stage}-{name}",
                validation_definitions=[definition],
                result_format={
                    "result_format": "SUMMARY",
                    "unexpected_index_column_names": ["id"],
                    "partial_unexpected_count": max(1, cfg.failed_examples),
                    "return_unexpected_index_query": False,
                },
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": prof.frame()})
        (suite_result,) = result.run_results.values()
        entry = _summarize(suite_result.to_json_dict(), prof, cfg.failed_examples)
        report["datasets"][name] = entry
        report["success"] = report["success"] and entry["success"]
    return report


def _plain(value: Any) -> Any:
    """numpy scalars to Python ones (for JSON and readable messages)."""
    return value.item() if hasattr(value, "item") else value


def _summarize(raw: dict[str, Any], prof: Profile, n_examples: int) -> dict[str, Any]:
    previews = dict(zip(prof.cols["id"], prof.cols["text"], strict=True))
    expectations = []
    for res in raw["results"]:
        conf = res["expectation_config"]
        kwargs = {k: v for k, v in conf["kwargs"].items() if k != "batch_id"}
        out = res.get("result") or {}
        item = {
            "expectation": conf["type"],
            "kwargs": kwargs,
            "success": bool(res["success"]),
            "observed": _plain(out.get("observed_value")),
            "unexpected_count": out.get("unexpected_count"),
            "unexpected_percent": out.get("unexpected_percent"),
            "examples": [],
        }
        for row in (out.get("partial_unexpected_index_list") or [])[:n_examples]:
            rid = row.get("id")
            col = kwargs.get("column")
            item["examples"].append(
                {
                    "id": rid,
                    "value": _plain(row.get(col)),
                    "text": previews.get(rid) if rid else None,
                }
            )
        expectations.append(item)
    return {
        "kind": prof.kind,
        "records": len(prof),
        "chars": prof.chars,
        "success": bool(raw["success"]),
        "evaluated": len(expectations),
        "failed": sum(not e["success"] for e in expectations),
        "expectations": expectations,
    }


def describe(item: dict[str, Any]) -> str:
    """``expect_column_values_to_be_between(n_chars, min_value=1, max_value=200000)``."""
    kwargs = dict(item["kwargs"])
    column = kwargs.pop("column", None)
    args = [column] if column else []
    args += [f"{k}={v}" for k, v in kwargs.items()]
    return f"{item['expectation']}({', '.join(map(str, args))})"


def _class_share_failure(name: str, ds: dict[str, Any], item: dict[str, Any]) -> str | None:
    """A failed class share said in the task's words too (the class by name), else None."""
    column = str(item["kwargs"].get("column", ""))
    if item["expectation"] != "expect_column_mean_to_be_between" or not column.startswith(
        SHARE_PREFIX
    ):
        return None
    label, share, least = column[len(SHARE_PREFIX) :], item["observed"], item["kwargs"]["min_value"]
    text = f"{name}: {describe(item)} failed: class {label!r} "
    if not share:
        return text + f"is missing (none of the {ds['records']} records has it)"
    return text + (
        f"has a share of {share:.3f} of the {ds['records']} records, under data.min_class_share "
        f"{least}"
    )


def failure_message(report: dict[str, Any], where: str) -> str:
    """One paragraph: every failed expectation with its observed value and a few offenders."""
    parts = []
    for name, ds in report["datasets"].items():
        for item in ds["expectations"]:
            if item["success"]:
                continue
            if share := _class_share_failure(name, ds, item):
                parts.append(share)
                continue
            text = f"{name}: {describe(item)} failed"
            if item["unexpected_count"] is not None:
                text += (
                    f" for {item['unexpected_count']} of {ds['records']} records"
                    f" ({item['unexpected_percent']:.2f}%)"
                )
            elif item["observed"] is not None:
                text += f" (observed {item['observed']})"
            if item["examples"]:
                shown = [
                    f"{e['id']} ({item['kwargs'].get('column')}={e['value']!r}"
                    + (f", text {e['text'][:30]!r}" if e.get("text") else "")
                    + ")"
                    for e in item["examples"]
                ]
                text += ", e.g. " + "; ".join(shown)
            parts.append(text)
    return (
        f"{where}: {len(parts)} expectation(s) failed, nothing was written downstream. "
        + ". ".join(parts)
        + ". Fix the records (or the bounds in the `data` section of params.yaml) and re-run."
    )
