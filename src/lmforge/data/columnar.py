"""The validate stage's fast path for plain text: a batch of documents as Arrow columns.

Plain-text files arrive from ``datasets`` as Arrow strings. Taken one record at a time (a dict,
a regex scan for personal data, a profile row, ``json.dumps``) they cost about 70 µs a
document, ten times the read. Here a batch is handled as columns:

- the profile's lengths, control characters and (ASCII texts) letter shares are counted by numpy
  over the batch's UTF-8 bytes, in place;
- the personal-data scan (``lmforge.data.pii``) runs only on the texts with an ``@`` or a digit,
  which RE2 picks out for the whole batch: every match needs one of them;
- the JSON lines are joined by Arrow string kernels and written as one buffer a split.

What cannot be done by columns is done per document by the record path's own functions: a
non-ASCII text's letter share, the escaping of a text with control characters, the masking. So
a folder of text files and the same documents as JSON lines give byte-identical split files and
the same profile (``tests/test_columnar.py``). Python remains in the loop for three hashes a
document (id, text hash, split); docs/benchmarks/data_throughput.md has what that costs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lmforge.data.expectations import PREVIEW_CHARS, Profile, letter_share
from lmforge.data.pii import Tally, find
from lmforge.data.records import JsonlWriters, Kind, text_digest
from lmforge.data.split import SPLITS, split_of


@dataclass
class TextBatch:
    """Plain-text documents (trimmed, none blank) and the file stem each came from: one for
    the whole batch (a file split on blank lines) or one a document (a file a document)."""

    text: pa.Array
    source: str | list[str]


def _byte_table(chars: bytes) -> np.ndarray:
    table = np.zeros(256, dtype=np.uint8)  # uint8, not bool: reduceat sums it twice as fast
    table[list(chars)] = 1
    return table


_LETTER = _byte_table(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_VISIBLE = 1 - _byte_table(b" \t\n\r\x0b\x0c")
# expectations._CONTROL, less the surrogates (not valid UTF-8, so never in an Arrow string);
# every byte of a multi-byte UTF-8 character is >= 0x80, so a byte count is a character count.
_CONTROL = _byte_table(bytes([*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]))
# The characters json.dumps escapes in the texts without a control character, in that order
# (the backslash first: the later replacements write backslashes).
_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"))
_PII_CANDIDATE = r"[@\p{Nd}]"  # pii.find looks for emails at an @, the rest around digits


def _bytes_of(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of a string array (no copy) and each string's offsets into them."""
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(arr.buffers()[1], width, len(arr) + 1, arr.offset * width().itemsize)
    data = arr.buffers()[2]
    raw = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return raw, offsets.astype(np.int64)


def _counts(hits: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per string, how many of its bytes are 1 in ``hits``."""
    out = np.zeros(len(offsets) - 1, np.int32)
    starts, ends = offsets[:-1], offsets[1:]
    full = np.flatnonzero(ends > starts)
    if len(full):  # reduceat sums from one start to the next; empty strings are skipped
        out[full] = np.add.reduceat(hits[: ends[-1]], starts[full], dtype=np.int32)
    return out


def _json_bodies(arr: pa.Array, control: np.ndarray) -> pa.Array:
    """Each text as ``json.dumps(text, ensure_ascii=False)`` writes it, without the quotes."""
    out = arr
    for old, new in _ESCAPES:
        out = pc.replace_substring(out, old, new)
    rare = np.flatnonzero(control > 0)
    if len(rare):
        redone = [json.dumps(arr[int(i)].as_py(), ensure_ascii=False)[1:-1] for i in rare]
        out = pc.replace_with_mask(out, pa.array(control > 0), pa.array(redone, out.type))
    return out


def _masked(
    batch: TextBatch, kind: Kind, splits: list[str], pii: Tally
) -> tuple[pa.Array, list, list[tuple[int, str]]]:
    """The texts as written under ``data.pii`` (masked, or their records dropped), with the
    kept documents' indices and the matches each had, and the masked texts by index."""
    arr, n = batch.text, len(batch.text)
    found = [0] * n
    dropped: list[int] = []
    candidates = np.flatnonzero(pc.match_substring_regex(arr, _PII_CANDIDATE).to_numpy(False))
    new_texts, new_at = [], np.zeros(n, bool)
    for i in candidates:
        old = arr[int(i)].as_py()
        text, found[i] = pii.apply(kind, splits[i], old)
        if text is None and found[i]:
            dropped.append(int(i))
        elif text is not old:
            new_at[i] = True
            new_texts.append((int(i), text))
    if new_texts:
        values = pa.array([t for _, t in new_texts], arr.type)
        arr = pc.replace_with_mask(arr, pa.array(new_at), values)
    keep = sorted(set(range(n)).difference(dropped)) if dropped else range(n)
    kept = [(i, found[i]) for i in keep]
    return (arr.take(pa.array(list(keep))) if dropped else arr), kept, new_texts


def add_batch(
    batch: TextBatch,
    kind: Kind,
    salt: tuple[str, float, float],
    pii: Tally,
    prof: Profile,
    writers: JsonlWriters,
) -> dict[str, int]:
    """Split, mask, profile and write one batch (what ``validate.split_and_profile`` does per
    record); returns the documents written per split. ``salt``: the split's salt and shares."""
    raw, offsets = _bytes_of(batch.text)
    n = len(batch.text)
    view, bounds = memoryview(raw), offsets.tolist()
    ids, hashes = [], []
    for i in range(n):  # the id and the text hash from one digest (records.text_digest)
        digest = text_digest(view[bounds[i] : bounds[i + 1]])
        ids.append("h-" + digest.hex())
        hashes.append(int.from_bytes(digest[:8]))
    splits = [split_of(rec_id, *salt) for rec_id in ids]
    sources = [batch.source] * n if isinstance(batch.source, str) else batch.source
    text, kept, masked = _masked(batch, kind, splits, pii)
    for i, new in masked:  # the profile hashes the text as written (the id, as read)
        hashes[i] = int.from_bytes(text_digest(new.encode("utf-8"))[:8])
    if len(kept) < n:
        keep = [i for i, _ in kept]
        ids, hashes = [ids[i] for i in keep], [hashes[i] for i in keep]
        splits, sources = [splits[i] for i in keep], [sources[i] for i in keep]
    cols = _profile_columns(text, ids, hashes, sources, kept, pii, prof)
    prof.add_columns(cols)
    return _write(text, ids, sources, splits, np.asarray(cols["control_chars"]), writers)


def _profile_columns(
    text: pa.Array,
    ids: list[str],
    hashes: list[int],
    sources: list[str],
    kept: list,
    pii: Tally,
    prof: Profile,
) -> dict[str, list[Any]]:
    raw, offsets = _bytes_of(text)
    lengths = offsets[1:] - offsets[:-1]
    control = _counts(_CONTROL[raw], offsets)
    letters, visible = _counts(_LETTER[raw], offsets), _counts(_VISIBLE[raw], offsets)
    share = np.divide(letters, visible, out=np.zeros(len(text)), where=visible > 0)
    shares = np.round(share, 4).tolist()
    for i in np.flatnonzero(~pc.string_is_ascii(text).to_numpy(False)):
        shares[i] = round(letter_share(text[int(i)].as_py()), 4)
    n_chars = pc.utf8_length(text).to_numpy(False) if len(text) else lengths
    cols: dict[str, list[Any]] = {
        "id": ids,
        "text": pc.utf8_slice_codeunits(text, 0, PREVIEW_CHARS).to_pylist(),
        "n_chars": n_chars.tolist(),
        "letter_share": shares,
        "control_chars": control.tolist(),
        "text_hash": hashes,
        "source": sources,
    }
    if prof.pii is not None:  # what was masked is scanned again; the rest had no match
        cols["pii_left"] = [
            len(find(text[j].as_py(), prof.pii)) if found else 0
            for j, (_, found) in enumerate(kept)
        ]
    return cols


def _write(
    text: pa.Array,
    ids: list[str],
    sources: list[str],
    splits: list[str],
    control: np.ndarray,
    writers: JsonlWriters,
) -> dict[str, int]:
    """The JSON lines ``JsonlWriters.write`` would write for these records, a split at a time."""
    quoted = {s: json.dumps(s, ensure_ascii=False) for s in set(sources)}
    lines = pc.binary_join_element_wise(
        '{"id": "',
        pa.array(ids),  # "h-" and hex digits: nothing to escape
        '", "source": ',
        pa.array([quoted[s] for s in sources]),
        ', "text": "',
        _json_bodies(text, control),
        '"}\n',
        "",
    )
    codes = np.asarray([SPLITS.index(s) for s in splits], np.int8)
    written = {}
    for k, split in enumerate(SPLITS):
        rows = np.flatnonzero(codes == k)
        written[split] = len(rows)
        if len(rows):
            part = lines.take(pa.array(rows))
            raw, offsets = _bytes_of(part)
            writers.write_bytes(split, raw[offsets[0] : offsets[-1]].data)
    return written
