"""Records: checked reading of JSON lines, the mapping of any input row to lmforge's record
schema, and streaming writing (atomic folders: ``lmforge.outputs``).

The checks a Great Expectations suite cannot make (it needs a table first) happen here, while a
file is read: empty or binary files, invalid UTF-8, a line too long to be a record, JSON that is
not an object of the expected schema. Each raises a ``DataError`` whose one paragraph names the
file, the line and the fix, before anything downstream is written. The other input formats are
read through ``datasets`` (``lmforge.data.sources``) and mapped by the same ``to_record``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmforge.errors import DataError

Kind = Literal["corpus", "labelled"]

# Required fields and the types their values may take (None: a null the suites report on).
SCHEMAS: dict[str, dict[str, tuple[type, ...]]] = {
    "corpus": {"id": (str,), "source": (str,), "text": (str, type(None))},
    "labelled": {"id": (str,), "text": (str, type(None)), "label": (str, type(None))},
}  # ids and labels that are ints are read as their strings (``_as_str``)
OPTIONAL: dict[str, dict[str, tuple[type, ...]]] = {
    "corpus": {"genre": (str, type(None))},
    "labelled": {},
}
_SNIFF_BYTES = 8192
TEXT_FORMATS = ("jsonl", "json", "text", "csv")
EXPECTED = {
    "jsonl": "JSON lines, one record per line",
    "json": "a JSON array of records",
    "text": "plain UTF-8 text",
    "csv": "CSV with a header row",
}


def check_file(path: Path, max_file_mb: float, fmt: str = "jsonl") -> None:
    """Refuse, up front, a file that is missing, empty, too large or (a text format) binary;
    ``fmt`` is the format it is read as (``lmforge.data.sources``)."""
    expected = EXPECTED.get(fmt, fmt)
    if not path.is_file():
        raise DataError(f"{path}: not found; run `dvc pull` (or `make data`) to fetch the data.")
    size = path.stat().st_size
    if size == 0:
        raise DataError(
            f"{path}: empty file (0 bytes); expected {expected}. "
            "Remove the file or rebuild data/ with scripts/build_data.py."
        )
    if size > max_file_mb * 1e6:
        raise DataError(
            f"{path}: {size / 1e6:.1f} MB is over data.max_file_mb={max_file_mb:g}; split it into "
            "several files or raise data.max_file_mb in params.yaml."
        )
    if fmt not in TEXT_FORMATS:
        return  # Parquet and Arrow are binary by design
    with path.open("rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    if b"\x00" in head:
        offset = head.index(b"\x00")
        raise DataError(
            f"{path}: binary file (NUL byte at offset {offset}); expected UTF-8 {expected}. "
            "Was a compressed or binary file given a text name (or set data.corpus_format / "
            "data.labelled_format)?"
        )


@dataclass(frozen=True)
class Fields:
    """Which input field holds each part of a record: the ``data.*_field`` settings (``prefix``:
    ``data.`` for the corpus', ``data.labelled_`` for the labelled set's). An empty ``id``
    derives the id from a hash of the text as written, masked (``as_written``), an empty
    ``source`` takes the file's stem."""

    text: str = "text"
    id: str = "id"
    source: str = "source"
    label: str = "label"
    prefix: str = "data."
    # An id the input gives is written as it is, beside the masked text: under data.pii mask or
    # drop, the allow-list (``pii.Allow``) under which one holding personal data is refused.
    pii: Any = field(default=None, compare=False)

    def wanted(self, kind: Kind) -> dict[str, str]:
        """Record field -> input field, for the fields read from the input (not derived)."""
        names = {"id": self.id, "text": self.text}
        names |= {"label": self.label} if kind == "labelled" else {"source": self.source}
        return {k: v for k, v in names.items() if v}

    def setting(self, name: str) -> str:
        return f"{self.prefix}{name}_field" if name in ("id", "text") else f"data.{name}_field"


IDENTITY = Fields()


DIGEST_SIZE = 10  # bytes of ``text_digest``: a derived id is "h-" and their hex


def text_digest(blob: bytes | memoryview) -> bytes:
    """The 10-byte BLAKE2b digest of a text's UTF-8: a derived id (``content_id``) and, its
    first 8 bytes, the profile's text hash; one hash a document serves both."""
    return hashlib.blake2b(blob, digest_size=DIGEST_SIZE).digest()


def content_id(text: str | None) -> str:
    """A record id from its text as written (after masking: ``as_written``): stable across
    runs, clones and file order; the same text gives the same id, so a repeated document is
    caught by the suites' unique-id expectation. Unkeyed, so it is only ever taken of a text
    that is stored beside it: a hash of the unmasked text would give back a masked IPv4 address
    or phone number to anyone who tries every candidate."""
    blob = ("\x00null" if text is None else text).encode("utf-8", "surrogatepass")
    return "h-" + text_digest(blob).hex()


def as_written(rec: dict[str, Any], text: str | None) -> dict[str, Any]:
    """``rec`` with ``text`` (masked: ``pii.Tally.masked``) in place of its text and, if its
    id is derived (None from ``to_record``), the id of that text."""
    if rec["id"] is None:
        return {**rec, "id": content_id(text), "text": text}
    return rec if text is rec["text"] else {**rec, "text": text}


def _preview(value: Any) -> str:
    """A value's first 40 characters of JSON for an error message, its personal data masked
    (masked before the cut, so that a cut address is masked too)."""
    from lmforge.data.pii import mask

    return mask(json.dumps(value, default=str)[:400])[0][:40]


def _refuse_personal_id(record_id: str, where: str, fields: Fields) -> None:
    """An id that holds personal data would undo the masking of its text (the id itself is
    never printed)."""
    from lmforge.data.pii import find

    found = find(record_id, fields.pii)
    if found:
        kinds = ", ".join(sorted({m.kind for m in found}))
        raise DataError(
            f"{where}: field {fields.id!r} holds personal data ({kinds}); ids are written as "
            "they are, beside the masked text, so it would undo the masking. Set "
            f"{fields.setting('id')}: '' to derive ids from the masked text, give the records "
            "keys that are not personal data, or list the value in data.pii_allow."
        )


def _as_str(value: Any) -> Any:
    """Ints (and integral floats: CSV columns with gaps) become strings, the same ``3`` from any
    format; other values are left for the type check."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value


def to_record(
    raw: Any, kind: Kind, where: str, fields: Fields = IDENTITY, stem: str = ""
) -> dict[str, Any]:
    """One input row (a JSON object or a table row) checked against ``kind``'s schema and mapped
    to lmforge's record (``SCHEMAS``, plus ``genre`` where the input has one)."""
    wanted = fields.wanted(kind)
    if not isinstance(raw, dict):
        raise DataError(
            f"{where}: expected a JSON object with fields {', '.join(wanted.values())}, "
            f"got {type(raw).__name__}."
        )
    rec: dict[str, Any] = {}
    for name, types in [*SCHEMAS[kind].items(), *OPTIONAL[kind].items()]:
        src = wanted.get(name, name if name in OPTIONAL[kind] else "")
        if not src:  # derived below
            continue
        if src not in raw:
            if name in OPTIONAL[kind]:
                continue
            derived = " ('' derives it)" if name in ("id", "source") else ""
            raise DataError(
                f"{where}: missing field {src!r} (record id {raw.get(fields.id or 'id')!r}); every "
                f"{kind} record needs {', '.join(wanted.values())}. Wrong schema, or a file in "
                f"the wrong folder? Other names: set {fields.setting(name)}{derived} in "
                "params.yaml."
            )
        value = _as_str(raw[src]) if name in ("id", "label") else raw[src]
        if not isinstance(value, types):
            allowed = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise DataError(
                f"{where}: field {src!r} is {type(value).__name__} "
                f"({_preview(value)}), expected {allowed}."
            )
        rec[name] = value
    if fields == IDENTITY and all(rec[k] is raw[k] for k in rec):
        rec = raw  # lmforge's own schema: the record as it was (extra fields kept)
    if "id" not in rec:  # derived after masking, from the text as written (``as_written``)
        rec = {"id": None, **rec}
    elif not rec["id"]:
        raise DataError(
            f"{where}: field {wanted['id']!r} is empty; every record needs a unique id "
            "(or set data.id_field: '' to derive ids from the text)."
        )
    elif fields.pii is not None:
        _refuse_personal_id(rec["id"], where, fields)
    if kind == "corpus" and "source" not in rec:
        rec = {"id": rec["id"], "source": stem, **rec}
    return rec


def read_records(
    path: Path,
    kind: Kind,
    max_line_mb: float = 4.0,
    allow_empty: bool = False,
    fields: Fields = IDENTITY,
) -> Iterator[dict[str, Any]]:
    """Yield the records of one JSON-lines file, checking each line as it is read; ``fields``
    maps the file's field names to lmforge's (``to_record``)."""
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
            yield to_record(rec, kind, f"{path}: line {line_no}", fields, path.stem)
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

    def write_bytes(self, split: str, lines: bytes | memoryview) -> None:
        """Whole JSON lines, already encoded (``lmforge.data.columnar``), after what ``write``
        has buffered."""
        fh = self.files[split]
        fh.flush()
        fh.buffer.write(lines)

    def append_file(self, split: str, path: Path) -> None:
        """The JSON lines of a file (a worker's part, ``lmforge.data.workers``), after what has
        been written: copied by the kernel, never through Python objects."""
        fh = self.files[split]
        fh.flush()
        with path.open("rb") as src:
            if not sys.platform.startswith("linux"):  # macOS sends files to sockets only
                shutil.copyfileobj(src, fh.buffer, 4 * 2**20)
                fh.buffer.flush()
                return
            size, sent = path.stat().st_size, 0
            while sent < size:
                n = os.sendfile(fh.fileno(), src.fileno(), sent, size - sent)
                if n == 0:
                    break
                sent += n

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()

    def __enter__(self) -> JsonlWriters:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
