"""Great Expectations suites over a per-record profile of each dataset.

Texts are streamed once; each record leaves one small row (id, label or source, length, share of
letters, control characters, a hash of the text, a short preview), so the table GX checks grows
with the number of records, not with the bytes of text; and a large dataset is checked a chunk
of rows at a time, keeping only compact columns of every record (``Profile``), so memory stays
bounded as the corpus grows. The suites run as real GX Core 1.x checkpoints (ephemeral context,
pandas datasource, ExpectationSuite, ValidationDefinition). GX is imported lazily: it takes
seconds, and the CLI must stay fast.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.config import DataConfig
from lmforge.data.pii import Allow, find
from lmforge.data.records import text_digest

PREVIEW_CHARS = 60
# Rows checked at once by the row-wise expectations (``Profile``): a check costs ~0.3 s whatever
# its size, so a large corpus is checked faster in large chunks (~60 MB of profile rows).
CHUNK_ROWS = 200_000
# The expectations that judge each row on its own; the others need every record at once.
ROW_WISE = {"ExpectColumnValuesToNotBeNull", "ExpectColumnValuesToBeBetween"}
TABLE_COLUMNS = ("id", "text_hash", "label", "file", "line")  # kept for every record (``Profile``)
# Each quoted record is named by its id and where it came from (its file, and the line or row).
LOCATORS = ["id", "file", "line"]
TABLE_FORMATS = (".csv", ".tsv", ".parquet", ".pq", ".json")  # a record there is a row
_CONTEXT = None
_CHECKPOINTS: dict[str, Any] = {}
SHARE_PREFIX = "is_"  # the indicator column of a class: its mean is the class's share
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_NON_LETTER = re.compile(r"[\W\d_]+")
_SPACE = re.compile(r"\s+")
_ASCII_LETTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ASCII_SPACE = b" \t\n\r\x0b\x0c"


def _arrow_types() -> dict:
    """The Arrow type of each profile column (the columns a batch of rows arrives in)."""
    import pyarrow as pa

    ints, text = pa.int64(), pa.string()
    return {
        "id": text,
        "text": text,
        "n_chars": ints,
        "letter_share": pa.float64(),
        "control_chars": ints,
        "text_hash": pa.uint64(),
        "source": text,
        "label": text,
        "pii_left": ints,
        "file": text,
        "line": ints,
    }


def _pandas_types() -> dict:
    """Arrow -> pandas column types of the compact table: the strings stay in Arrow buffers
    (no Python object a record), the hash a nullable integer (a null text has no hash)."""
    import pandas as pd
    import pyarrow as pa

    return {pa.uint64(): pd.UInt64Dtype(), pa.string(): pd.StringDtype("pyarrow")}


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
    """The per-record profile of one dataset (``kind``: corpus or labelled); its memory grows
    with the records, by a few hundred bytes each, never with their text.

    ``cols`` holds the rows of the current chunk added one at a time (lists), ``batches`` those
    added a batch at a time (``add_columns``: Arrow record batches, no Python object a row); the
    chunk's rows are the batches', then the lists'. With ``bounds`` (the ``data`` params) set, a
    full chunk of ``CHUNK_ROWS`` rows is checked at once by the expectations that look at one
    row at a time (``ROW_WISE``) and dropped, its results merged into the earlier chunks'. What
    the other expectations need of every record (unique ids, the share of repeated texts, the
    labels and their shares) is kept for the whole dataset, compactly: the ids, 8-byte text
    hashes and labels as Arrow arrays (~35 bytes a record for hashed ids), never a pandas table
    of the whole profile (preview, lengths, shares: Python objects of every record). The hash
    tables GX builds over these columns for the final check bring the peak to ~245 bytes a
    record: a 1 GB corpus of 1.8 M documents peaks at 1.1 GB RSS, 0.55 GB of it the libraries
    (docs/benchmarks/data_throughput.md). Without ``bounds`` every row stays (augment's few
    thousand training records) and the suites run on one table, as a dataset that fits in one
    chunk always does.
    """

    kind: str
    labels: list[str] = field(default_factory=list)
    cols: dict[str, list] = field(default_factory=dict)
    chars: int = 0
    # Set: the column ``pii_left`` counts the personal-data matches (not allow-listed) left in
    # each text, and the suite expects 0 (``data.pii`` mask or drop).
    pii: Allow | None = None
    bounds: DataConfig | None = None
    table: dict[str, list] = field(default_factory=dict)  # flushed chunks' id, text_hash, label
    checked: list[dict[str, Any]] | None = None  # flushed chunks' merged row-wise results
    batches: list[Any] = field(default_factory=list)  # the current chunk's pa.RecordBatches
    _check: Any = None  # the row-wise GX checkpoint, built at the first flush

    def __post_init__(self):
        names = ["id", "text", "n_chars", "letter_share", "control_chars", "text_hash"]
        names += ["label"] if self.kind == "labelled" else ["source"]
        names += ["pii_left"] if self.pii is not None else []
        names += ["file", "line"]
        self.cols = {n: [] for n in names}
        self.table = {n: [] for n in TABLE_COLUMNS if n in self.cols}

    def add(
        self, rec: dict[str, Any], pii_left: int | None = None, where: tuple[str, int] = ("", 0)
    ) -> None:
        """One row; ``pii_left`` may be given when the caller has just scanned this very text;
        ``where``: its file and line (or row)."""
        text = rec["text"]
        c = self.cols
        c["id"].append(rec["id"])
        c["file"].append(where[0] or None)
        c["line"].append(where[1] or None)
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
        else:
            self.chars += len(text)
            c["text"].append(text[:PREVIEW_CHARS])
            c["n_chars"].append(len(text))
            c["letter_share"].append(round(letter_share(text), 4))
            c["control_chars"].append(len(_CONTROL.findall(text)))
            blob = text.encode("utf-8", "surrogatepass")
            c["text_hash"].append(int.from_bytes(text_digest(blob)[:8]))
            if self.pii is not None:
                c["pii_left"].append(len(find(text, self.pii)) if pii_left is None else pii_left)
        if self.bounds is not None and len(c["id"]) >= CHUNK_ROWS:
            self.flush()

    def add_columns(self, cols: dict[str, Any]) -> None:
        """Many rows at once, an array a column, numpy or Arrow (``lmforge.data.columnar``):
        what ``add`` would have appended for each, no text null. They stay Arrow buffers until
        GX checks them: a million rows as Python lists cost seconds to build and convert."""
        import pyarrow as pa

        self._batch_the_lists()  # rows added one at a time before this batch come first
        types = _arrow_types()
        arrays = [pa.array(cols[name], types[name]) for name in self.cols]
        self.batches.append(pa.RecordBatch.from_arrays(arrays, names=list(self.cols)))
        self.chars += int(np.sum(cols["n_chars"]))  # plain text: never a null
        if self.bounds is not None and self._pending() >= CHUNK_ROWS:
            self.flush()

    def _batch_the_lists(self) -> None:
        import pyarrow as pa

        if self.cols["id"]:
            types = _arrow_types()
            arrays = [pa.array(v, types[n]) for n, v in self.cols.items()]
            self.batches.append(pa.RecordBatch.from_arrays(arrays, names=list(self.cols)))
            for values in self.cols.values():
                values.clear()

    def _pending(self) -> int:
        return sum(b.num_rows for b in self.batches) + len(self.cols["id"])

    def __len__(self) -> int:
        return sum(len(a) for a in self.table["id"]) + self._pending()

    def ids_and_labels(self) -> Iterator[tuple[str, str | None]]:
        """(id, label) of every record so far (a labelled profile)."""
        for ids, labels in zip(self.table["id"], self.table["label"], strict=True):
            yield from zip(ids.to_pylist(), labels.to_pylist(), strict=True)
        for b in self.batches:
            yield from zip(b["id"].to_pylist(), b["label"].to_pylist(), strict=True)
        yield from zip(self.cols["id"], self.cols["label"], strict=True)

    def pending_rows(self) -> dict[str, list]:
        """The current chunk's rows, a list a column (in the order they were added)."""
        if not self.batches:
            return {name: list(values) for name, values in self.cols.items()}
        rows = self._chunk_table().to_pydict()
        return {name: rows[name] for name in self.cols}

    def _chunk_table(self):
        """The current chunk as one Arrow table (after the batches were made)."""
        import pyarrow as pa

        self._batch_the_lists()
        return pa.Table.from_batches(self.batches)

    def frame(self):
        """The current chunk's rows as a table (with the class indicator columns)."""
        import pandas as pd

        if not self.batches:  # rows added one at a time: the lists as they are
            return self._with_shares(pd.DataFrame(self.cols))
        df = self._chunk_table().to_pandas(types_mapper=_pandas_types().get)
        return self._with_shares(df)

    def _with_shares(self, df):
        for label in self.labels:  # class shares as means of indicator columns
            df[SHARE_PREFIX + label] = (df["label"] == label).astype(float)
        return df

    def flush(self) -> None:
        """Check the current chunk row by row, keep its compact columns, drop its rows."""
        if not self._pending():
            return
        if self._check is None:
            spec = [
                e
                for e in suite_spec(self.bounds, self.kind, self.pii is not None, [])
                if e[0] in ROW_WISE
            ]
            self._check = _checkpoint(spec, self.bounds.failed_examples)
        frame = self.frame()
        items = _condense(_run(self._check, frame), Previews(frame), self.bounds.failed_examples)
        self.checked = items if self.checked is None else _merge(self.checked, items, self.bounds)
        chunk = self._chunk_table()  # the lists too, as one more batch
        for name in self.table:
            column = chunk.column(name).combine_chunks()
            # a file's path once, not once a record: a few bytes a row for every record
            self.table[name].append(pc_dictionary(column) if name == "file" else column)
        self.batches.clear()

    def table_frame(self):
        """The compact columns of every record (after a ``flush``), for the cross-record
        expectations: ids, text hashes, labels and class indicators."""
        import pyarrow as pa

        columns = {n: pa.chunked_array(chunks, chunks[0].type) for n, chunks in self.table.items()}
        df = pa.table(columns).to_pandas(types_mapper=_pandas_types().get)
        return self._with_shares(df)


class Previews:
    """id -> text preview of a profile frame, looked up only for the few records a failed
    expectation quotes (a dict of every row's would cost as much as the check)."""

    def __init__(self, frame):
        self.frame = frame

    def get(self, rid: str) -> str | None:
        if self.frame is None or not len(self.frame):
            return None
        hits = (self.frame["id"] == rid).to_numpy(dtype=bool, na_value=False).nonzero()[0]
        if not len(hits):
            return None
        text = self.frame["text"].iat[int(hits[-1])]  # a repeated id: its last row's, as a dict
        return text if isinstance(text, str) else None  # a null text (None or pd.NA): none


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
            {"column": "letter_share", "min_value": cfg.min_alpha_share, "max_value": 1.0}
            | ({"mostly": cfg.labelled_alpha_mostly} if kind == "labelled" else {}),
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
                    "min_value": cfg.class_share_floor(len(labels)),
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


def _gx():
    """One ephemeral GX context and pandas datasource for the process (made once: seconds)."""
    global _CONTEXT
    if _CONTEXT is None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        # GX fingerprints each dataframe (an md5 over every cell) into batch markers that an
        # ephemeral context never reads: about 2 s of CPU a GB of corpus. It is left on: the only
        # switch is a module constant of GX's pandas engine, no public setting, and patching GX's
        # internals at run time would change GX for anything else in the process.
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        _CONTEXT = (gx, context, context.data_sources.add_pandas("lmforge"))
    return _CONTEXT


def _checkpoint(spec: list[tuple[str, dict[str, Any]]], failed_examples: int):
    """A GX checkpoint of the expectations ``spec`` over a dataframe given at each run; one per
    distinct suite in the process (reused: every chunk, and every run of the same params)."""
    key = repr((spec, failed_examples))
    if key not in _CHECKPOINTS:
        _CHECKPOINTS[key] = _new_checkpoint(spec, failed_examples)
    return _CHECKPOINTS[key]


def _new_checkpoint(spec: list[tuple[str, dict[str, Any]]], failed_examples: int):
    gx, context, source = _gx()
    name = f"lmforge-{len(_CHECKPOINTS)}"
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    for cls_name, kwargs in spec:
        suite.add_expectation(getattr(gx.expectations, cls_name)(**kwargs))
    batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe("all")
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch, suite=suite)
    )
    return context.checkpoints.add(
        gx.Checkpoint(
            name=name,
            validation_definitions=[definition],
            result_format={
                "result_format": "SUMMARY",
                "unexpected_index_column_names": LOCATORS,
                "partial_unexpected_count": max(1, failed_examples),
                "return_unexpected_index_query": False,
            },
        )
    )


def _run(checkpoint, frame) -> list[dict[str, Any]]:
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    (suite_result,) = result.run_results.values()
    return suite_result.to_json_dict()["results"]


def run_suites(cfg: DataConfig, profiles: dict[str, Profile], stage: str) -> dict[str, Any]:
    """Run the suites of each dataset; return the report (``success``, per-dataset results).

    A profile that never filled a chunk is checked as one table by one checkpoint. One that
    did (``Profile.bounds``) has had its chunks checked row by row; its last chunk is, then the
    cross-record expectations run once on the compact columns of every record, and the results
    are merged in the suite's order."""
    report: dict[str, Any] = {"stage": stage, "success": True, "datasets": {}}
    for name, prof in profiles.items():
        spec = suite_spec(cfg, prof.kind, prof.pii is not None, prof.labels)
        if prof.checked is None:  # one chunk: one table
            frame = prof.frame()
            raw = _run(_checkpoint(spec, cfg.failed_examples), frame)
            items = _condense(raw, Previews(frame), cfg.failed_examples)
        else:
            prof.flush()
            table = [e for e in spec if e[0] not in ROW_WISE]
            raw = _run(_checkpoint(table, cfg.failed_examples), prof.table_frame())
            across = iter(_condense(raw, {}, cfg.failed_examples))
            rows = iter(prof.checked)
            items = [next(across if e[0] not in ROW_WISE else rows) for e in spec]
        entry = _summarize(items, prof)
        report["datasets"][name] = entry
        report["success"] = report["success"] and entry["success"]
    return report


def pc_dictionary(column):
    import pyarrow.compute as pc

    return pc.dictionary_encode(column)


def located(file: Any, line: Any) -> str | None:
    """Where a record came from: ``data/corpus/a.jsonl: line 12``, ``row 12`` in a table
    format, ``document 3`` of a plain-text file split on blank lines (its line is < 0)."""
    if not isinstance(file, str) or not file:
        return None
    try:
        n = int(line)
    except (TypeError, ValueError):
        return file
    if n < 0:  # a document of a plain-text file split on blank lines, by number
        return f"{file}: document {-n}"
    path = Path(file)
    unit = "row" if path.suffix.lower() in TABLE_FORMATS or path.is_dir() else "line"
    return f"{file}: {unit} {n}"


def _plain(value: Any) -> Any:
    """numpy scalars to Python ones (for JSON and readable messages)."""
    return value.item() if hasattr(value, "item") else value


def _condense(
    results: list[dict[str, Any]], previews: Previews | dict[str, str], n_examples: int
) -> list[dict[str, Any]]:
    """GX results -> report items; ``_denominator``: the rows the percentage is of (merging)."""
    items = []
    for res in results:
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
            "_denominator": out.get("element_count", 0) - out.get("missing_count", 0),
        }
        for row in (out.get("partial_unexpected_index_list") or [])[:n_examples]:
            rid = row.get("id")
            col = kwargs.get("column")
            item["examples"].append(
                {
                    "id": rid,
                    "value": _plain(row.get(col)),
                    "text": previews.get(rid) if rid else None,
                    "where": located(row.get("file"), row.get("line")),
                }
            )
        items.append(item)
    return items


def _merge(
    done: list[dict[str, Any]], chunk: list[dict[str, Any]], cfg: DataConfig
) -> list[dict[str, Any]]:
    """Row-wise results of two sets of rows as the results of their union."""
    out = []
    for a, b in zip(done, chunk, strict=True):
        n = a["_denominator"] + b["_denominator"]
        bad = (a["unexpected_count"] or 0) + (b["unexpected_count"] or 0)
        out.append(
            {
                **a,
                "success": a["success"] and b["success"],
                "unexpected_count": bad,
                "unexpected_percent": 100.0 * bad / n if n else None,
                "examples": (a["examples"] + b["examples"])[: cfg.failed_examples],
                "_denominator": n,
            }
        )
    return out


def _summarize(items: list[dict[str, Any]], prof: Profile) -> dict[str, Any]:
    expectations = [{k: v for k, v in item.items() if k != "_denominator"} for item in items]
    return {
        "kind": prof.kind,
        "records": len(prof),
        "chars": prof.chars,
        "success": all(e["success"] for e in expectations),
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


def _example(e: dict[str, Any], item: dict[str, Any], data_dir: str) -> str:
    """``tales/0003 at corpus/tales.jsonl: line 4 (n_chars=0)``: a record by its id and where
    it is (under the data folder the message names first), its value and its first words."""
    column = item["kwargs"].get("column")
    where = e.get("where") or ""
    where = where.removeprefix(data_dir.rstrip("/") + "/")
    details = [f"{column}={e['value']!r}"] if column != "id" else []
    details += [f"text {e['text'][:30]!r}"] if e.get("text") else []
    return (
        f"{e['id']}"
        + (f" at {where}" if where else "")
        + (f" ({', '.join(details)})" if details else "")
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
                text += ", e.g. " + "; ".join(_example(e, item, where) for e in item["examples"])
            parts.append(text)
    return (
        f"{where}: {len(parts)} expectation(s) failed, nothing was written downstream. "
        + ". ".join(parts)
        + ". Fix the records (or the bounds in the `data` section of params.yaml) and re-run."
    )
