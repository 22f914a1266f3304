"""Reading captioned images: a captions file (JSON lines, CSV, Parquet) naming each image under
a folder, or a ``save_to_disk`` dataset whose image column is an ``Image`` feature.

Each row becomes a :class:`RawPair` that says where it came from (``captions.csv: row 4``) and
how to get the image's bytes; nothing is decoded here (``lmforge.data.images.store`` does that).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config.image_data import ImageDataConfig
from lmforge.errors import DataError

_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_SUFFIXES[".pq"] = "parquet"


@dataclass
class RawPair:
    file: str  # the captions file (or dataset folder) as shown, under the data folder
    unit: str  # "line" (JSON lines) or "row" (tables, datasets)
    n: int  # the line or row, from 1
    image: str  # the image as the row names it (a path, or "<embedded>" in a dataset)
    caption: Any  # as read: validate checks its type
    read: Callable[[], bytes] | None  # the image's bytes; None: the row names no image
    path: Path | None  # the file on disk (None: bytes inside a dataset)
    flip_ok: bool = True  # False: the row's multimodal.data.flip_field says never mirror it

    @property
    def where(self) -> str:
        """``images/captions.jsonl: line 3``: the row, for every message."""
        return f"{self.file}: {self.unit} {self.n}"

    @property
    def source(self) -> str:
        """``images/captions.jsonl:3``: the row, as the stored pair records it."""
        return f"{self.file}:{self.n}"


def captions_path(cfg: ImageDataConfig, data_dir: Path) -> tuple[Path, str]:
    """The captions file (or dataset folder) and the format it is read as; refused up front."""
    path = Path(data_dir) / cfg.captions_file
    if not path.exists():
        raise DataError(
            f"{path}: no such captions file or dataset folder; set multimodal.data.captions_file "
            "(under the data folder) to a JSON lines, CSV or Parquet file naming each image, or "
            "a save_to_disk folder with an Image column."
        )
    fmt = cfg.captions_format
    if fmt == "auto":
        fmt = "arrow" if path.is_dir() else _SUFFIXES.get(path.suffix.lower(), "")
    if not fmt:
        raise DataError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; set "
            "multimodal.data.captions_format to jsonl, csv, parquet or arrow."
        )
    if (fmt == "arrow") != path.is_dir():
        raise DataError(
            f"{path}: read as {fmt}, but it is a {'folder' if path.is_dir() else 'file'}; fix "
            "multimodal.data.captions_format (arrow is a save_to_disk folder, the others files)."
        )
    return path, fmt


def read(cfg: ImageDataConfig, data_dir: Path) -> Iterator[RawPair]:
    path, fmt = captions_path(cfg, data_dir)
    images_dir = Path(data_dir) / cfg.images_dir if cfg.images_dir else path.parent
    shown = path.relative_to(data_dir) if path.is_relative_to(data_dir) else path
    if fmt == "arrow":
        yield from _dataset_rows(cfg, path, shown, images_dir)
        return
    unit = "line" if fmt == "jsonl" else "row"
    for n, row in _rows(path, fmt):
        if not isinstance(row, dict):
            raise DataError(
                f"{path}: {unit} {n} is {type(row).__name__}, not an object with the fields "
                f"{cfg.image_field!r} and {cfg.caption_field!r}; one JSON object a line."
            )
        _check_fields(cfg, row, path, f"{unit} {n}")
        at = (str(shown), unit, n)
        raw = _from_file(at, row[cfg.image_field], row[cfg.caption_field], images_dir)
        raw.flip_ok = _flag(row.get(cfg.flip_field, True))
        yield raw


def _flag(value: Any) -> bool:
    """A flip flag as JSON, CSV ("false", "0") or Parquet write it; missing or null: True."""
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no", "n")
    return value is None or bool(value)


def _check_fields(cfg: ImageDataConfig, row: dict, path: Path, where: str) -> None:
    missing = [f for f in (cfg.image_field, cfg.caption_field) if f not in row]
    if missing:
        raise DataError(
            f"{path}: {where} has no field {missing[0]!r} (it has {sorted(map(str, row))}); set "
            "multimodal.data.image_field / caption_field to the names your file uses."
        )


def _from_file(at: tuple[str, str, int], name: Any, caption: Any, images_dir: Path) -> RawPair:
    if not isinstance(name, str) or not name.strip():
        return RawPair(*at, repr(name), caption, None, None)
    file = images_dir / name
    return RawPair(*at, name, caption, file.read_bytes, file)


def _rows(path: Path, fmt: str) -> Iterator[tuple[int, Any]]:
    if fmt == "jsonl":
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield n, json.loads(line)
                    except ValueError as exc:
                        raise DataError(
                            f"{path}: line {n} is not valid JSON ({exc}); one object a line."
                        ) from None
    elif fmt == "csv":
        with path.open(encoding="utf-8", newline="") as fh:
            # Row numbers count data rows from 1 (the header is not one), as in a table viewer.
            yield from enumerate(csv.DictReader(fh), 1)
    else:
        import pyarrow.parquet as pq

        yield from enumerate(pq.read_table(path).to_pylist(), 1)


def _dataset_rows(
    cfg: ImageDataConfig, path: Path, shown: Path, images_dir: Path
) -> Iterator[RawPair]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(
            f"{path}: not a folder written by Dataset.save_to_disk ({exc}); save the dataset "
            "with save_to_disk, or point multimodal.data.captions_file at a captions file."
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(
            f"{path}: a DatasetDict ({sorted(ds)}); save one split (or their concatenation): "
            "lmforge makes its own split by image hash."
        )
    _check_fields(cfg, dict.fromkeys(ds.column_names), path, "the dataset")
    if isinstance(ds.features[cfg.image_field], datasets.Image):
        ds = ds.cast_column(cfg.image_field, datasets.Image(decode=False))  # bytes, not PIL
    for n, row in enumerate(ds, 1):
        at, image, caption = (str(shown), "row", n), row[cfg.image_field], row[cfg.caption_field]
        if isinstance(image, dict) and image.get("bytes"):
            data = image["bytes"]
            raw = RawPair(*at, image.get("path") or "<embedded>", caption, lambda d=data: d, None)
        elif isinstance(image, dict):
            raw = _from_file(at, image.get("path"), caption, images_dir)
        else:
            raw = _from_file(at, image, caption, images_dir)
        raw.flip_ok = _flag(row.get(cfg.flip_field, True))
        yield raw
