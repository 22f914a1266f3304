"""The validate stage's fast path for plain text: a batch of documents as Arrow columns.

Plain-text files arrive from ``datasets`` as Arrow strings. Taken one record at a time (a dict,
a regex scan for personal data, a profile row, ``json.dumps``) they cost about 70 µs a
document, ten times the read. Here a batch is handled as columns:

- the profile's lengths and (ASCII texts) letter shares are counted by numpy over the batch's
  UTF-8 bytes, in place; the rare bytes (control characters, what JSON escapes, ``@`` and
  digits) are found by position;
- the personal-data scan (``lmforge.data.pii``) runs only on the texts with an ``@``, a digit
  or an address written out (``[at]``), which RE2 picks out for the whole batch: every match
  needs one of them;
- the JSON lines are joined by Arrow string kernels and written as one buffer a split.

What cannot be done by columns is done per document by the record path's own functions: a
non-ASCII text's letter share, the escaping of a text with control characters, the masking. So
a folder of text files and the same documents as JSON lines give byte-identical split files and
the same profile (``tests/test_columnar.py``). Python remains in the loop for two hashes a
document: the masked text's digest (its id and its profile hash: an id never holds what the
masking removed) and the id's (its split); the hex, the ids and the comparisons are done for the
batch. docs/benchmarks/data_throughput.md has what that costs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lmforge.data.expectations import PREVIEW_CHARS, Profile, letter_share
from lmforge.data.pii import AT_WORD_HINT, Allow, Match, Tally, find
from lmforge.data.records import DIGEST_SIZE, JsonlWriters, Kind, text_digest
from lmforge.data.split import SPLITS, split_codes


@dataclass
class TextBatch:
    """Plain-text documents (trimmed, none blank) and the file stem each came from: one for
    the whole batch (a file split on blank lines) or one a document (a file a document); where
    each came from (the file's path, one or one a document, and the line each starts at: a
    validation message names them)."""

    text: pa.Array
    source: str | list[str]
    file: str | list[str] = ""
    line: np.ndarray | None = None


# Byte classes by comparisons (SIMD; a 256-entry table lookup is ten times slower). uint8
# arithmetic wraps, so ``b - lo < n`` is ``lo <= b < lo + n``.
def _letters(raw: np.ndarray) -> np.ndarray:
    return ((raw | 0x20) - 0x61) < 26  # A-Z, a-z: the ASCII letters


def _spaces(raw: np.ndarray) -> np.ndarray:
    return (raw == 0x20) | ((raw - 0x09) < 5)  # space, \t \n \v \f \r


def _candidates(raw: np.ndarray) -> np.ndarray:  # an @ or an ASCII digit
    return (raw == 0x40) | ((raw - 0x30) < 10)


# The rare byte classes are found by position, not counted over every byte: the bytes below
# 0x20 (mostly line ends), DEL, quotes and backslashes, @ and digits are a few percent of a text,
# and a mask over every byte of a batch, reduced string by string, cost more than the rest of
# the profile together.
def _positions(raw: np.ndarray, offsets: np.ndarray, hits) -> np.ndarray:
    """Where ``hits(bytes)`` is True among the strings' bytes (positions into ``raw``)."""
    lo = int(offsets[0])
    return np.flatnonzero(hits(raw[lo : int(offsets[-1])])) + lo


def _string_of(positions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The string each byte position falls in (an empty string holds none)."""
    return np.searchsorted(offsets, positions, side="right") - 1


def _count_at(positions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per string, how many of ``positions`` fall in it."""
    return np.bincount(_string_of(positions, offsets), minlength=len(offsets) - 1)


def _low(raw: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the bytes below 0x20, and those bytes."""
    at = _positions(raw, offsets, lambda b: b < 0x20)
    return at, raw[at]


# expectations._CONTROL, less the surrogates (not valid UTF-8, so never in an Arrow string);
# every byte of a multi-byte UTF-8 character is >= 0x80, so a byte count is a character count.
def _control_counts(raw: np.ndarray, offsets: np.ndarray, low) -> np.ndarray:
    at, byte = low
    below = at[(byte != 0x09) & (byte != 0x0A) & (byte != 0x0D)]  # not \t \n \r
    delete = _positions(raw, offsets, lambda b: b == 0x7F)
    return _count_at(np.concatenate([below, delete]), offsets)


def _escaped_any(raw: np.ndarray, offsets: np.ndarray, low) -> np.ndarray:
    """Per string, whether json.dumps escapes any of its characters but control characters."""
    at, byte = low
    line = at[(byte == 0x09) | (byte == 0x0A) | (byte == 0x0D)]
    quoted = _positions(raw, offsets, lambda b: (b == 0x22) | (b == 0x5C))
    return _count_at(np.concatenate([line, quoted]), offsets) > 0


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


def _per_string(ufunc: np.ufunc, hits: np.ndarray, offsets: np.ndarray, **kw) -> np.ndarray:
    """``ufunc`` reduced over each string's bytes of ``hits`` (0 for an empty string)."""
    out = np.zeros(len(offsets) - 1, kw.get("dtype", np.uint8))
    starts, ends = offsets[:-1], offsets[1:]
    full = np.flatnonzero(ends > starts)
    if len(full):  # reduceat runs from one start to the next; empty strings are skipped
        out[full] = ufunc.reduceat(hits[: ends[-1]].view(np.uint8), starts[full], **kw)
    return out


def _counts(hits: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per string, how many of its bytes are True in ``hits``."""
    return _per_string(np.add, hits, offsets, dtype=np.int32)


def _any(hits: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per string, whether any of its bytes is True in ``hits``."""
    return _per_string(np.maximum, hits, offsets) > 0


def paragraphs(arr: pa.Array) -> pa.Array:
    """``datasets``' paragraphs as documents: line ends trimmed from both ends of each text and
    the blank texts dropped (``utf8_trim(arr, "\\n")``, then a filter on
    ``utf8_trim_whitespace``), the kernels run only on the texts that can need them."""
    raw, offsets = _bytes_of(arr)
    starts, ends = offsets[:-1], offsets[1:]
    full = np.flatnonzero(ends > starts)
    edge = np.zeros(len(arr), bool)
    edge[full] = (raw[starts[full]] == 0x0A) | (raw[ends[full] - 1] == 0x0A)
    if edge.any():
        mask = pa.array(edge)
        arr = pc.replace_with_mask(arr, mask, pc.utf8_trim(arr.filter(mask), "\n"))
        raw, offsets = _bytes_of(arr)
    # A text with a visible ASCII character is no blank one, whatever counts as whitespace.
    maybe = np.flatnonzero(~_any((raw - 0x21) < 0x5E, offsets))
    if not len(maybe):
        return arr
    blank = pc.equal(pc.utf8_trim_whitespace(arr.take(pa.array(maybe))), "").to_numpy(False)
    keep = np.ones(len(arr), bool)
    keep[maybe[blank]] = False
    return arr.filter(pa.array(keep))


def _json_bodies(arr: pa.Array, control: np.ndarray) -> pa.Array:
    """Each text as ``json.dumps(text, ensure_ascii=False)`` writes it, without the quotes."""
    raw, offsets = _bytes_of(arr)
    escaped = _escaped_any(raw, offsets, _low(raw, offsets)) & (control == 0)
    out = arr
    if escaped.any():  # the kernels' passes over the texts that have something to escape
        part = arr.filter(pa.array(escaped))
        for old, new in _ESCAPES:
            part = pc.replace_substring(part, old, new)
        out = pc.replace_with_mask(out, pa.array(escaped), part)
    rare = np.flatnonzero(control > 0)
    if len(rare):
        redone = [json.dumps(arr[int(i)].as_py(), ensure_ascii=False)[1:-1] for i in rare]
        out = pc.replace_with_mask(out, pa.array(control > 0), pa.array(redone, out.type))
    return out


def _pii_candidates(arr: pa.Array) -> np.ndarray:
    """The texts that can hold personal data: an ASCII text with an @ or a digit, a non-ASCII
    one that RE2 finds one in (``\\p{Nd}`` has digits beyond 0-9), and any that RE2 finds an
    address written out in (``[at]``: ``pii.AT_WORD_HINT``)."""
    raw, offsets = _bytes_of(arr)
    found = _count_at(_positions(raw, offsets, _candidates), offsets) > 0
    wide = np.flatnonzero(~pc.string_is_ascii(arr).to_numpy(False))
    if len(wide):
        some = pc.match_substring_regex(arr.take(pa.array(wide)), _PII_CANDIDATE)
        found[wide] = some.to_numpy(False)
    rest = np.flatnonzero(~found)
    if len(rest):
        some = pc.match_substring_regex(arr.take(pa.array(rest)), AT_WORD_HINT)
        found[rest] = some.to_numpy(False)
    return found


def _masked(arr: pa.Array, pii: Tally) -> tuple[pa.Array, dict[int, list[Match]]]:
    """The texts masked (``Tally.masked``: under ``drop`` too, for their ids) and each
    candidate's matches by index."""
    matches: dict[int, list[Match]] = {}
    new_texts, new_at = [], np.zeros(len(arr), bool)
    for i in np.flatnonzero(_pii_candidates(arr)).tolist():
        old = arr[i].as_py()
        found = pii.scan(old)
        if not found:
            continue
        matches[i] = found
        new = pii.masked(old, found)
        if new is not old:
            new_at[i] = True
            new_texts.append(new)
    if new_texts:
        arr = pc.replace_with_mask(arr, pa.array(new_at), pa.array(new_texts, arr.type))
    return arr, matches


@dataclass
class Done:
    """Documents validated: their profile rows (a dict of arrays a batch), their JSON lines a
    split (in memory, or in ``parts``: a file a split, written by a worker process), and, from a
    worker, the personal-data matches it found (``Tally.merge``)."""

    cols: list[dict[str, Any]]
    lines: dict[str, bytes]
    counts: dict[str, int]  # documents a split
    tally: Tally | None = None
    parts: dict[str, Path] = field(default_factory=dict)
    rows: np.ndarray | None = None  # the batch's documents kept (None: all; data.pii drop)
    curation: Any = None  # what curation counted and still has to decide (lmforge.data.curate)


def apply(done: Done, prof: Profile, writers: JsonlWriters) -> dict[str, int]:
    """Validated documents into the profile and the split files; the documents per split."""
    for cols in done.cols:
        prof.add_columns(cols)
    for split, lines in done.lines.items():
        if lines:
            writers.write_bytes(split, lines)
    for split, part in done.parts.items():
        writers.append_file(split, part)
        part.unlink()
    return done.counts


def process(
    batch: TextBatch,
    kind: Kind,
    salt: tuple[str, float, float],
    pii: Tally,
    checked: Allow | None,
) -> Done:
    """Split, mask and profile one batch, and encode its JSON lines: no state but ``pii``'s
    counts, so a worker process can do it (``lmforge.data.workers``). ``checked``: the
    allow-list under which the profile counts the personal data left (None: not counted)."""
    n = len(batch.text)
    sources = [batch.source] * n if isinstance(batch.source, str) else batch.source
    files = [batch.file] * n if isinstance(batch.file, str) else batch.file
    at = np.ones(n, np.int64) if batch.line is None else np.asarray(batch.line, np.int64)
    # Masked first: the ids (and the profile's hashes) are of the text as written.
    text, matches = _masked(batch.text, pii)
    ids, keys, hashes = _content_ids(text)
    splits = split_codes(keys, *salt)  # split_of, inlined
    found = np.zeros(n, np.int32)
    dropped = []
    for i, each in matches.items():
        found[i] = len(each)
        if pii.count(kind, SPLITS[splits[i]], each):
            dropped.append(i)
    if dropped:
        keep = np.setdiff1d(np.arange(n), dropped)
        text, ids, found = text.take(pa.array(keep)), ids.take(pa.array(keep)), found[keep]
        hashes, splits = hashes[keep], splits[keep]
        sources = [sources[i] for i in keep.tolist()]
        files, at = [files[i] for i in keep.tolist()], at[keep]
    cols = _profile_columns(text, ids, hashes, sources, found, checked)
    cols |= {"file": pa.array(files, pa.string()), "line": at}
    lines, counts = _lines(text, ids, sources, splits, np.asarray(cols["control_chars"]))
    return Done([cols], lines, counts, rows=keep if dropped else None)


ID_WIDTH = 2 + 2 * DIGEST_SIZE  # "h-" and the hex digits of the digest (records.content_id)


def _content_ids(text: pa.Array) -> tuple[pa.Array, list[bytes], np.ndarray]:
    """Each text's derived id (``records.content_id``), as Arrow strings and as the bytes the
    split hashes, and its profile hash (the digest's first 8 bytes, big-endian): one digest a
    text (``records.text_digest``), the hex and the rest done for the whole batch."""
    raw, offsets = _bytes_of(text)
    n, view, bounds = len(text), memoryview(raw), offsets.tolist()
    digests = b"".join([text_digest(view[bounds[i] : bounds[i + 1]]) for i in range(n)])
    rows = np.empty((n, ID_WIDTH), np.uint8)
    rows[:, :2] = np.frombuffer(b"h-", np.uint8)
    rows[:, 2:] = np.frombuffer(digests.hex().encode("ascii"), np.uint8).reshape(n, -1)
    ends = np.arange(0, ID_WIDTH * (n + 1), ID_WIDTH, dtype=np.int32)
    ids = pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(ends), pa.py_buffer(rows)])
    flat = rows.tobytes()
    keys = [flat[k : k + ID_WIDTH] for k in range(0, len(flat), ID_WIDTH)]
    first8 = np.frombuffer(digests, np.uint8).reshape(n, DIGEST_SIZE)[:, :8].copy()
    return ids, keys, first8.view(">u8").ravel().astype(np.uint64)


def _profile_columns(
    text: pa.Array,
    ids: pa.Array,
    hashes: np.ndarray,
    sources: list[str],
    found: np.ndarray,
    checked: Allow | None,
) -> dict[str, Any]:
    """The batch's profile rows, an array a column (numpy or Arrow: sent to the validating
    process as buffers and kept so until GX checks them, ``Profile.add_columns``)."""
    raw, offsets = _bytes_of(text)
    lengths = offsets[1:] - offsets[:-1]
    control = _control_counts(raw, offsets, _low(raw, offsets))
    letters, visible = _counts(_letters(raw), offsets), lengths - _counts(_spaces(raw), offsets)
    share = np.divide(letters, visible, out=np.zeros(len(text)), where=visible > 0)
    shares = np.round(share, 4)
    for i in np.flatnonzero(~pc.string_is_ascii(text).to_numpy(False)):
        shares[i] = round(letter_share(text[int(i)].as_py()), 4)
    n_chars = pc.utf8_length(text).to_numpy(False) if len(text) else lengths
    cols: dict[str, Any] = {
        "id": ids,
        "text": pc.utf8_slice_codeunits(text, 0, PREVIEW_CHARS),
        "n_chars": n_chars.astype(np.int64),
        "letter_share": shares,
        "control_chars": control.astype(np.int64),
        "text_hash": hashes,
        "source": pa.array(sources, pa.string()),
    }
    if checked is not None:  # what was masked is scanned again; the rest had no match
        left = np.zeros(len(text), np.int64)
        for j in np.flatnonzero(found):
            left[j] = len(find(text[int(j)].as_py(), checked))
        cols["pii_left"] = left
    return cols


def _lines(
    text: pa.Array, ids: pa.Array, sources: list[str], splits: np.ndarray, control: np.ndarray
) -> tuple[dict[str, bytes], dict[str, int]]:
    """The JSON lines ``JsonlWriters.write`` would write for these records, a split at a time,
    and how many a split."""
    quoted = {s: json.dumps(s, ensure_ascii=False) for s in set(sources)}
    lines = pc.binary_join_element_wise(
        '{"id": "',
        ids,  # "h-" and hex digits: nothing to escape
        '", "source": ',
        pa.array([quoted[s] for s in sources]),
        ', "text": "',
        _json_bodies(text, control),
        '"}\n',
        "",
    )
    codes = np.asarray(splits, np.int8)
    encoded, written = {}, {}
    for k, split in enumerate(SPLITS):
        rows = np.flatnonzero(codes == k)
        written[split] = len(rows)
        raw, offsets = _bytes_of(lines.take(pa.array(rows)))
        encoded[split] = raw[offsets[0] : offsets[-1]].tobytes()
    return encoded, written
