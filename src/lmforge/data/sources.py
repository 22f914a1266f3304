"""Raw inputs in the formats users arrive with, read as lmforge records, streaming.

JSON lines go through lmforge's own line reader (``records.read_records``): it names the line of
any fault (invalid UTF-8, bad JSON, a missing field). Plain text, JSON, Parquet, CSV and folders
written by ``Dataset.save_to_disk`` are read through ``datasets``: streaming ``load_dataset``
(no Arrow cache copy of the input; batches of ``BATCH`` rows) or the memory-mapped
``load_from_disk``. Every row is then mapped to the record schema by ``records.to_record``
(``data.text_field``, ``id_field``, ``source_field``, ``label_field``), so the suites, the split,
personal-data masking and augmentation see the same records whatever the input was.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge.config import DataConfig
from lmforge.data.records import Fields, Kind, check_file, read_records, to_record
from lmforge.errors import DataError

BATCH = 1000
EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
}
BUILDERS = {"json": "json", "text": "text", "parquet": "parquet", "csv": "csv"}


def format_setting(kind: Kind) -> str:
    return "data.corpus_format" if kind == "corpus" else "data.labelled_format"


def detect(path: Path, kind: Kind, cfg: DataConfig) -> str:
    """The format ``path`` is read as: the setting, or (auto) its extension; a folder is a
    ``save_to_disk`` dataset."""
    chosen = cfg.corpus_format if kind == "corpus" else cfg.labelled_format
    if chosen != "auto":
        return chosen
    if path.is_dir():
        return "arrow"
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: cannot tell the format from the extension {path.suffix or '(none)'!r}; "
            f"use one of {', '.join(EXTENSIONS)} or set {format_setting(kind)} in params.yaml."
        )
    return fmt


def fields_of(cfg: DataConfig, kind: Kind) -> Fields:
    if kind == "labelled":
        return Fields(
            cfg.labelled_text_field, cfg.labelled_id_field, "", cfg.label_field, "data.labelled_"
        )
    return Fields(cfg.text_field, cfg.id_field, cfg.source_field, cfg.label_field)


def check_input(path: Path, kind: Kind, cfg: DataConfig) -> str:
    """Refuse a missing, empty, oversized or binary input up front; return its format."""
    fmt = detect(path, kind, cfg)
    if fmt != "arrow":
        check_file(path, cfg.max_file_mb, fmt)
    elif not (path / "state.json").is_file() and not (path / "dataset_dict.json").is_file():
        raise DataError(
            f"{path}: not a folder written by Dataset.save_to_disk (no state.json or "
            f"dataset_dict.json); point the glob at such a folder or set {format_setting(kind)}."
        )
    return fmt


def read(paths: list[Path], kind: Kind, cfg: DataConfig) -> Iterator[dict[str, Any]]:
    """The records of ``paths`` (checked by ``check_input``), in order."""
    fields = fields_of(cfg, kind)
    per_file_text: list[Path] = []  # plain-text documents: one datasets call for a run of files
    for path in paths:
        fmt = detect(path, kind, cfg)
        if fmt == "text" and cfg.text_documents == "file":
            per_file_text.append(path)
            continue
        yield from _text_files(per_file_text, kind, fields)
        per_file_text = []
        if fmt == "jsonl":
            yield from read_records(path, kind, cfg.max_line_mb, fields=fields)
        else:
            mapping = _plain_text(fields) if fmt == "text" else fields
            rows = _checked_columns(_rows(path, fmt, cfg, kind), path, kind, mapping, fmt)
            stem = path.name if fmt == "arrow" else path.stem
            unit = "document" if fmt == "text" else "row"
            for n, row in enumerate(rows, 1):
                yield to_record(row, kind, f"{path}: {unit} {n}", mapping, stem)
    yield from _text_files(per_file_text, kind, fields)


def _plain_text(fields: Fields) -> Fields:
    """Plain text has no fields but the text: ids from its hash, the source from the file."""
    return Fields("text", "", "", fields.label, fields.prefix)


def _text_files(paths: list[Path], kind: Kind, fields: Fields) -> Iterator[dict[str, Any]]:
    """One document per file: ``sample_by="document"`` yields one row a file, in order, so the
    row's file (its source) is known without a ``datasets`` call per file."""
    if not paths:
        return
    mapping = _plain_text(fields)
    rows = _load("text", paths, {"sample_by": "document", "encoding": "utf-8-sig"})
    done = 0
    try:
        for batch in rows:
            for text in batch["text"]:
                path = paths[done]
                done += 1
                # a file's last line end is not part of its document
                yield to_record({"text": text.rstrip("\n")}, kind, str(path), mapping, path.stem)
    except UnicodeDecodeError as exc:
        raise _not_utf8(paths[done], exc) from None


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> DataError:
    bad = exc.object[exc.start : exc.start + 4].hex(" ")
    return DataError(
        f"{path}: invalid UTF-8 ({exc.reason}, bytes {bad}); "
        "re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
    )


def _load(builder: str, paths: list[Path], kwargs: dict[str, Any]) -> Iterator[dict[str, list]]:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    ds = datasets.load_dataset(
        builder, data_files=[str(p) for p in paths], split="train", streaming=True, **kwargs
    )
    return ds.iter(batch_size=BATCH)


def _rows(path: Path, fmt: str, cfg: DataConfig, kind: Kind) -> Iterator[dict[str, Any]]:
    """The rows of one non-JSON-lines input, as dicts; a file ``datasets`` cannot read is a
    ``DataError`` naming it."""
    try:
        if fmt == "arrow":
            batches = _saved(path)
        else:
            kwargs: dict[str, Any] = {}
            if fmt == "text":  # blank_line: ``paragraph`` splits on an empty line ("\n\n")
                kwargs = {"sample_by": "paragraph", "encoding": "utf-8-sig"}
            elif fmt == "csv":
                kwargs = {"encoding": "utf-8-sig"} | (
                    {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
                )
            batches = _load(BUILDERS[fmt], [path], kwargs)
        for batch in batches:
            names = list(batch)
            for values in zip(*batch.values(), strict=True):
                row = dict(zip(names, values, strict=True))
                if fmt == "text":
                    row["text"] = row["text"].strip("\n")
                    if not row["text"].strip():
                        continue  # more than one blank line between two documents
                yield row
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    except Exception as exc:  # pyarrow, pandas and datasets each raise their own
        detail = " ".join(str(exc).split())[:200]
        raise DataError(
            f"{path}: cannot be read as {fmt} ({type(exc).__name__}: {detail}); check the file, "
            f"or set {format_setting(kind)} if it is another format."
        ) from None


def _saved(path: Path) -> Iterator[dict[str, list]]:
    """A ``save_to_disk`` folder (memory-mapped); a DatasetDict's splits one after the other
    (lmforge splits again, by id)."""
    import datasets

    datasets.disable_progress_bars()
    saved = datasets.load_from_disk(str(path))
    parts = [saved[name] for name in sorted(saved)] if isinstance(saved, dict) else [saved]
    for part in parts:
        yield from part.iter(batch_size=BATCH)


def _checked_columns(
    rows: Iterator[dict[str, Any]], path: Path, kind: Kind, fields: Fields, fmt: str
) -> Iterator[dict[str, Any]]:
    """A table's columns are known from its first row: a missing one is named once, with the
    columns there are and the setting to change, instead of a failure on every row."""
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path}: no records; expected {fmt} rows with a text field.")
    if fmt != "text":
        for name, src in fields.wanted(kind).items():
            if src not in first:
                derived = " (or '' to derive it)" if name in ("id", "source") else ""
                raise DataError(
                    f"{path}: no column {src!r} for the {kind} {name}; the columns are "
                    f"{', '.join(map(repr, first))}. Set {fields.setting(name)} to one of "
                    f"them{derived} in params.yaml."
                )
    yield first
    yield from rows
