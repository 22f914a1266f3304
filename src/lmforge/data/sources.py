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

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from lmforge.config import DataConfig
from lmforge.data.columnar import TextBatch, paragraphs
from lmforge.data.pii import Allow
from lmforge.data.records import Fields, Kind, check_file, read_records, to_record
from lmforge.errors import DataError

BATCH = 1000
ARROW_BATCH = 10_000  # plain-text documents a columnar batch (~5 MB of text at 0.5 KB each)
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


@dataclass(frozen=True)
class TextFiles:
    """Plain-text input read and validated as a unit, by a worker process or in this one
    (``lmforge.data.workers``): one file of documents split on blank lines, or a run of
    one-document files (``per_file``), at most ``ARROW_BATCH`` of them."""

    paths: tuple[Path, ...]
    per_file: bool


@dataclass(frozen=True)
class Located:
    """A record and where it came from: its file and line (JSON lines) or row (tables)."""

    rec: dict[str, Any]
    file: str
    line: int


def text_batches(task: TextFiles) -> Iterator[TextBatch]:
    """The documents of ``task``, a ``TextBatch`` of at most ``ARROW_BATCH`` at a time."""
    if task.per_file:
        return _text_files(list(task.paths))
    return _paragraphs(task.paths[0])


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
    # ids that hold personal data are refused unless data.pii is keep (records.to_record)
    pii = None if cfg.pii == "keep" else Allow(cfg.pii_allow)
    if kind == "labelled":
        return Fields(
            cfg.labelled_text_field,
            cfg.labelled_id_field,
            "",
            cfg.label_field,
            "data.labelled_",
            pii,
        )
    return Fields(cfg.text_field, cfg.id_field, cfg.source_field, cfg.label_field, pii=pii)


def check_input(path: Path, kind: Kind, cfg: DataConfig) -> str:
    """Refuse a missing, empty, oversized or binary input up front; return its format."""
    fmt = detect(path, kind, cfg)
    if fmt == "text" and kind == "labelled":
        raise DataError(
            f"{path}: plain text has no labels; the labelled set is CSV, JSON lines or Parquet "
            f"with a {cfg.label_field!r} column (data.labelled_file, data.label_field)."
        )
    if fmt != "arrow":
        check_file(path, cfg.max_file_mb, fmt)
    elif not (path / "state.json").is_file() and not (path / "dataset_dict.json").is_file():
        raise DataError(
            f"{path}: not a folder written by Dataset.save_to_disk (no state.json or "
            f"dataset_dict.json); point the glob at such a folder or set {format_setting(kind)}."
        )
    return fmt


def read(paths: list[Path], kind: Kind, cfg: DataConfig) -> Iterator[Located | TextFiles]:
    """The records of ``paths`` (checked by ``check_input``), in order: a ``Located`` record,
    except plain text, which comes as files to read (``TextFiles``: ``text_batches`` gives their
    documents), for the validate stage's columnar path (``lmforge.data.columnar``)."""
    fields = fields_of(cfg, kind)
    per_file_text: list[Path] = []  # plain-text documents: one datasets call for a run of files
    for path in paths:
        fmt = detect(path, kind, cfg)
        if fmt == "text" and cfg.text_documents == "file":
            per_file_text.append(path)
            if len(per_file_text) == ARROW_BATCH:
                yield TextFiles(tuple(per_file_text), per_file=True)
                per_file_text = []
            continue
        if per_file_text:
            yield TextFiles(tuple(per_file_text), per_file=True)
        per_file_text = []
        if fmt == "jsonl":
            records = read_records(path, kind, cfg.max_line_mb, fields=fields)
            for rec, line in zip(records, _record_lines(path), strict=False):
                yield Located(rec, str(path), line)
        elif fmt == "text":
            yield TextFiles((path,), per_file=False)
        else:
            rows = _checked_columns(_rows(path, fmt, cfg, kind), path, kind, fields, fmt)
            stem = path.name if fmt == "arrow" else path.stem
            for n, row in enumerate(rows, 1):
                yield Located(to_record(row, kind, f"{path}: row {n}", fields, stem), str(path), n)
    if per_file_text:
        yield TextFiles(tuple(per_file_text), per_file=True)


def _record_lines(path: Path) -> Iterator[int]:
    """The line number of each record of a JSON-lines file: its lines that are not blank, as
    ``records.read_records`` reads them (read alongside it, a line at a time)."""
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            if raw.decode("utf-8", "replace").strip():
                yield n


def _paragraphs(path: Path) -> Iterator[TextBatch]:
    """Documents split on blank lines: ``sample_by="paragraph"`` splits on an empty line."""
    n = 0
    with _reading(path, "text", "corpus"):
        kwargs = {"sample_by": "paragraph", "encoding": "utf-8-sig"}
        for table in _load("text", [path], kwargs, arrow=True):
            # more than one blank line between two documents leaves a blank one
            text = paragraphs(table.column("text").combine_chunks())
            if len(text):
                # where: the document's number in the file (``datasets`` drops the empty pieces
                # of a run of blank lines, so their line is not known): "document N"
                yield TextBatch(text, path.stem, str(path), -np.arange(n + 1, n + len(text) + 1))
            n += len(text)
    if n == 0:
        raise DataError(f"{path}: no records; expected plain text, documents split by blank lines.")


def _text_files(paths: list[Path]) -> Iterator[TextBatch]:
    """One document per file: ``sample_by="document"`` yields one row a file, in order, so the
    row's file (its source) is known without a ``datasets`` call per file."""
    if not paths:
        return
    done = 0
    try:
        kwargs = {"sample_by": "document", "encoding": "utf-8-sig"}
        for table in _load("text", paths, kwargs, arrow=True):
            # a file's last line end is not part of its document
            text = pc.utf8_rtrim(table.column("text").combine_chunks(), "\n")
            batch = paths[done : done + len(text)]
            yield TextBatch(text, [p.stem for p in batch], [str(p) for p in batch])
            done += len(text)
    except UnicodeDecodeError as exc:  # in this batch: the first of its files that fails
        bad = next((p for p in paths[done:] if not _is_utf8(p)), paths[done])
        raise _not_utf8(bad, exc) from None


def _is_utf8(path: Path) -> bool:
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> DataError:
    bad = exc.object[exc.start : exc.start + 4].hex(" ")
    return DataError(
        f"{path}: invalid UTF-8 ({exc.reason}, bytes {bad}); "
        "re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
    )


def _load(
    builder: str, paths: list[Path], kwargs: dict[str, Any], arrow: bool = False
) -> Iterator[Any]:
    """Streaming batches of ``paths``: dicts of lists, or (``arrow``) Arrow tables of
    ``ARROW_BATCH`` rows, never turned into Python objects."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    with _plain_names(paths) as names:
        ds = datasets.load_dataset(
            builder, data_files=names, split="train", streaming=True, **kwargs
        )
        if arrow:
            yield from ds.with_format("arrow").iter(batch_size=ARROW_BATCH)
        else:
            yield from ds.iter(batch_size=BATCH)


# ``datasets`` reads ``data_files`` as patterns and URLs: ``::`` chains URLs, ``*``, ``?`` and
# ``[...]`` glob (``a[1].txt`` matches nothing; ``a*.txt`` other files too), ``#`` and ``%``
# are URL syntax. Paths with anything but these characters are passed as they are.
_PLAIN_PATH = re.compile(r"[\w ./+,=@~-]*")


@contextmanager
def _plain_names(paths: list[Path]) -> Iterator[list[str]]:
    """``paths`` as names ``datasets`` reads as plain local files: a path with a character it
    reads as syntax is given through a symbolic link of a plain name (in a temporary folder, gone
    after the read), so any name a filesystem allows is read as the file it names."""
    if all(_PLAIN_PATH.fullmatch(str(p)) for p in paths):
        yield [str(p) for p in paths]
        return
    with tempfile.TemporaryDirectory(prefix="lmforge-names-") as tmp:
        names = []
        for n, path in enumerate(paths):
            if _PLAIN_PATH.fullmatch(str(path)):
                names.append(str(path))
                continue
            suffix = path.suffix if _PLAIN_PATH.fullmatch(path.suffix) else ""
            link = os.path.join(tmp, f"{n:06d}{suffix}")
            os.symlink(path.resolve(), link)
            names.append(link)
        yield names


@contextmanager
def _reading(path: Path, fmt: str, kind: Kind) -> Iterator[None]:
    """A file ``datasets`` cannot read is a ``DataError`` naming it."""
    try:
        yield
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


def _rows(path: Path, fmt: str, cfg: DataConfig, kind: Kind) -> Iterator[dict[str, Any]]:
    """The rows of a JSON, Parquet, CSV or ``save_to_disk`` input, as dicts."""
    with _reading(path, fmt, kind):
        if fmt == "arrow":
            batches = _saved(path)
        else:
            kwargs: dict[str, Any] = {}
            if fmt == "csv":
                kwargs = {"encoding": "utf-8-sig"} | (
                    {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
                )
            batches = _load(BUILDERS[fmt], [path], kwargs)
        for batch in batches:
            names = list(batch)
            for values in zip(*batch.values(), strict=True):
                yield dict(zip(names, values, strict=True))


def _saved(path: Path) -> Iterator[dict[str, list]]:
    """A ``save_to_disk`` folder (memory-mapped); a DatasetDict's splits one after the other
    (lmforge splits again, by id)."""
    import datasets

    datasets.disable_progress_bars()
    with _plain_names([path]) as (name,):
        saved = datasets.load_from_disk(name)
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
