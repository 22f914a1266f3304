"""JSON-lines records: checked reading and streaming writing (atomic folders: ``lmforge.outputs``).

The checks a Great Expectations suite cannot make (it needs a table first) happen here, while a
file is read: empty or binary files, invalid UTF-8, a line too long to be a record, JSON that is
not an object of the expected schema. Each raises a ``DataError`` whose one paragraph names the
file, the line and the fix, before anything downstream is written.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from lmforge.errors import DataError

Kind = Literal["corpus", "labelled"]

# Required fields and the types their values may take (None: a null the suites report on).
SCHEMAS: dict[str, dict[str, tuple[type, ...]]] = {
    "corpus": {"id": (str,), "source": (str,), "text": (str, type(None))},
    "labelled": {"id": (str,), "text": (str, type(None)), "label": (str, type(None))},
}
OPTIONAL: dict[str, dict[str, tuple[type, ...]]] = {
    "corpus": {"genre": (str, type(None))},
    "labelled": {},
}
_SNIFF_BYTES = 8192


def check_file(path: Path, max_file_mb: float) -> None:
    """Refuse, up front, a file that is missing, empty, too large or binary."""
    if not path.is_file():
        raise DataError(f"{path}: not found; run `dvc pull` (or `make data`) to fetch the data.")
    size = path.stat().st_size
    if size == 0:
        raise DataError(
            f"{path}: empty file (0 bytes); expected JSON lines, one record per line. "
            "Remove the file or rebuild data/ with scripts/build_data.py."
        )
    if size > max_file_mb * 1e6:
        raise DataError(
            f"{path}: {size / 1e6:.1f} MB is over data.max_file_mb={max_file_mb:g}; split it into "
            "several .jsonl files or raise data.max_file_mb in params.yaml."
        )
    with path.open("rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    if b"\x00" in head:
        offset = head.index(b"\x00")
        raise DataError(
            f"{path}: binary file (NUL byte at offset {offset}); expected UTF-8 JSON "
            "lines. Was a compressed or binary file given a .jsonl name?"
        )


def _check_schema(path: Path, line_no: int, rec: Any, kind: Kind) -> dict[str, Any]:
    where = f"{path}: line {line_no}"
    if not isinstance(rec, dict):
        raise DataError(
            f"{where}: expected a JSON object with fields {', '.join(SCHEMAS[kind])}, "
            f"got {type(rec).__name__}."
        )
    for name, types in [*SCHEMAS[kind].items(), *OPTIONAL[kind].items()]:
        if name not in rec:
            if name in OPTIONAL[kind]:
                continue
            raise DataError(
                f"{where}: missing field {name!r} (record id {rec.get('id')!r}); every {kind} "
                f"record needs {', '.join(SCHEMAS[kind])}. Wrong schema, or a file in the wrong "
                "folder?"
            )
        if not isinstance(rec[name], types):
            allowed = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise DataError(
                f"{where}: field {name!r} is {type(rec[name]).__name__} "
                f"({json.dumps(rec[name])[:40]}), expected {allowed}."
            )
    if not rec["id"]:
        raise DataError(f"{where}: field 'id' is empty; every record needs a unique id.")
    return rec


def read_records(
    path: Path, kind: Kind, max_line_mb: float = 4.0, allow_empty: bool = False
) -> Iterator[dict[str, Any]]:
    """Yield the records of one JSON-lines file, checking each line as it is read."""
    limit = int(max_line_mb * 1e6)
    n = 0
    with path.open("rb") as fh:
        line_no = 0
        while True:
            raw = fh.readline(limit + 1)
            if not raw:
                break
            line_no += 1
            if len(raw) > limit:
                fh.seek(0, 2)
                raise DataError(
                    f"{path}: line {line_no} is longer than data.max_line_mb={max_line_mb:g} MB "
                    "(one record per line; a whole file on one line, or a missing newline?). "
                    "Split it into records or raise data.max_line_mb."
                )
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte order mark is harmless
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = raw[exc.start : exc.start + 4].hex(" ")
                raise DataError(
                    f"{path}: line {line_no}: invalid UTF-8 at byte {exc.start} of the line "
                    f"(bytes {bad}); re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
                ) from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}: line {line_no}: not valid JSON ({exc.msg} at column {exc.colno}); "
                    "expected one JSON object per line."
                ) from None
            except RecursionError:  # the parser's nesting bound (about 1000 levels)
                raise DataError(
                    f"{path}: line {line_no}: JSON nested too deeply to read; a record is one "
                    'flat object such as {"id": ..., "text": ...}.'
                ) from None
            n += 1
            yield _check_schema(path, line_no, rec, kind)
    if n == 0 and not allow_empty:
        raise DataError(f"{path}: no records (only blank lines); expected one JSON object a line.")


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records, one JSON object a line; returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    # surrogatepass: a lone surrogate (a \\ud800 escape) is reported by the suites, not a crash.
    with path.open("w", encoding="utf-8", errors="surrogatepass") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


class JsonlWriters:
    """One open writer per split, for streaming records into ``{split}.jsonl`` files."""

    def __init__(self, folder: Path, splits: Iterable[str]):
        folder.mkdir(parents=True, exist_ok=True)
        self.files = {
            s: (folder / f"{s}.jsonl").open("w", encoding="utf-8", errors="surrogatepass")
            for s in splits
        }

    def write(self, split: str, rec: dict[str, Any]) -> None:
        self.files[split].write(json.dumps(rec, ensure_ascii=False) + "\n")

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()

    def __enter__(self) -> JsonlWriters:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
