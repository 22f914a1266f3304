"""Curation of the corpus in the validate stage: what real text needs before it is checked.

Real corpora carry what tools leave in text (escape sequences, backspace overstrikes, form
feeds), documents longer than a record may be, and many copies of the same text. Instead of
refusing the corpus for them, the validate stage (``data.curate_*``):

- normalises each document: escape sequences (ANSI/VT100) removed, overstrikes resolved as
  ``col -b`` does (``a\\bb`` -> ``b``, ``_\\bx`` -> ``x``), form feeds made line ends, the other
  control characters (``\\n`` and ``\\t`` kept) removed, Unicode NFC, trailing whitespace of
  each line and of the text removed; a text that this leaves empty is removed. Only what stays
  broken after this is refused by the checks;
- splits a document longer than ``data.max_chars`` at blank lines (then at line ends, then at
  spaces, then anywhere) into pieces the checks accept, each with its own id: the hash of its
  masked text, or ``{id}#{k}`` for an id the input gives;
- removes the documents (pieces) that a rule of ``lmforge.data.filters`` fails: the quality
  heuristics of published recipes (``lmforge.data.quality``, ``data.quality_*``), a language
  not kept (``lmforge.data.langid``, ``data.languages``), a word n-gram shared with an
  evaluation text (decontamination);
- removes exact duplicates (the same text as written, by its hash) and near duplicates
  (MinHash LSH over word n-grams: ``datasketch``), keeping the first document in input order.

Normalising, splitting and the rules are done per document, in the worker processes too
(``lmforge.data.workers``), and so is the costly part of near-duplicate detection, the MinHash
signature of each document (of its text before masking: signatures stay in memory, never
written). The decisions are taken in this process, in input order (``Deduper``), so the output
is the same for any number of workers. Its memory grows with the documents kept: an 8-byte
text hash, id and place and, for near duplicates, the signature (4 bytes a permutation: 512
bytes at 128) and datasketch's band tables: 3.7 KB a kept document measured at 128
permutations (docs/data.md#curation). The labelled set is the task's ground truth and is left
as it is.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lmforge.config import DataConfig
from lmforge.data import filters, quality
from lmforge.data.columnar import Done, TextBatch, process
from lmforge.data.expectations import located
from lmforge.data.records import Kind, text_digest
from lmforge.data.split import SPLITS, split_codes

# The rules counted in the report, in the order they are applied.
NORMALISING = ("escape_sequence", "overstrike", "form_feed", "control", "nfc", "trailing_space")
REMOVING = ("empty_after_normalising", *filters.RULES, "exact_duplicate", "near_duplicate")

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[ -/]*[0-~])")
_OVERSTRIKE = re.compile(r"[^\x08\n]\x08")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0d-\x1f\x7f-\x9f]")  # \t \n kept; \f made \n first
_TRAILING = re.compile(r"[ \t]+$", re.M)
# A document that needs no normalising: ASCII with no control character but \t and \n and no
# space before a line end. RE2 picks those that may need it out of a batch at once.
_MAY_NEED = r"[\x00-\x08\x0b-\x1f\x7f]|[ \t]\n|\s$|^\s*$"


@dataclass(frozen=True)
class Rules:
    """The ``data.curate_*`` settings a worker process needs (picklable)."""

    normalise: bool
    split_long: bool
    max_chars: int
    exact: bool
    near: bool
    threshold: float
    ngram: int
    num_perm: int
    examples: int
    screen: filters.Screen = filters.NO_SCREEN

    @classmethod
    def of(
        cls, cfg: DataConfig, kind: Kind, contaminants: np.ndarray | None = None
    ) -> Rules | None:
        """The corpus's rules (``contaminants``: the evaluation texts' n-grams,
        ``filters.evaluation_ngrams``); None for the labelled set (left as given)."""
        if kind != "corpus":
            return None
        thresholds = None
        if cfg.curate_quality:
            thresholds = quality.Thresholds(
                cfg.quality_min_words,
                cfg.quality_max_words,
                cfg.quality_min_mean_word_length,
                cfg.quality_max_mean_word_length,
                cfg.quality_max_symbol_ratio,
                cfg.quality_min_punctuated_lines,
                cfg.quality_max_duplicate_lines,
                cfg.quality_max_top_2gram,
                cfg.quality_max_duplicate_5grams,
            )
        screen = filters.Screen(
            thresholds,
            tuple(cfg.languages),
            cfg.language_min_probability,
            cfg.decontaminate_ngram,
            contaminants if cfg.curate_decontaminate else None,
        )
        return cls(
            cfg.curate_normalise,
            cfg.curate_split_long,
            cfg.max_chars,
            cfg.curate_exact_dedup,
            cfg.curate_near_dedup,
            cfg.near_dedup_threshold,
            cfg.near_dedup_ngram,
            cfg.near_dedup_permutations,
            cfg.curate_examples,
            screen,
        )


@dataclass
class Stats:
    """What curation did: documents read, per rule the documents it changed or removed (and per
    source file stem), the first ``examples`` of each with where they came from."""

    examples: int = 3
    documents_in: int = 0
    chars_in: int = 0
    split_documents: int = 0
    split_pieces: int = 0
    rules: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NORMALISING + REMOVING, 0))
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    by_file: dict[str, dict[str, int]] = field(default_factory=dict)  # removals only
    shown: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def count(self, rule: str, source: str, file: str, line: int, **detail: Any) -> None:
        self.rules[rule] += 1
        for key, table in ((source, self.by_source), (file, self.by_file)):
            if table is self.by_file and rule not in REMOVING:
                continue
            per = table.setdefault(key, {})
            per[rule] = per.get(rule, 0) + 1
        shown = self.shown.setdefault(rule, [])
        if len(shown) < self.examples:
            shown.append({"where": located(file, line), **detail})

    def merge(self, other: Stats) -> None:
        """``other``'s counts after this one's (a worker's: applied in input order)."""
        self.documents_in += other.documents_in
        self.chars_in += other.chars_in
        self.split_documents += other.split_documents
        self.split_pieces += other.split_pieces
        for rule, n in other.rules.items():
            self.rules[rule] += n
        for table, theirs in ((self.by_source, other.by_source), (self.by_file, other.by_file)):
            for key, per in theirs.items():
                mine = table.setdefault(key, {})
                for rule, n in per.items():
                    mine[rule] = mine.get(rule, 0) + n
        for rule, shown in other.shown.items():
            mine = self.shown.setdefault(rule, [])
            mine += shown[: self.examples - len(mine)]

    def summary(self, records: int, chars: int) -> dict[str, Any]:
        removed = {rule: self.rules[rule] for rule in REMOVING}
        return {
            "documents_in": self.documents_in,
            "chars_in": self.chars_in,
            "records_out": records,
            "chars_out": chars,
            "normalised": {rule: self.rules[rule] for rule in NORMALISING},
            "split": {"documents": self.split_documents, "pieces": self.split_pieces},
            "removed": removed,
            "removed_total": sum(removed.values()),
            "by_source": {s: per for s, per in sorted(self.by_source.items())},
            "by_file": {f: per for f, per in sorted(self.by_file.items())},
            "examples": self.shown,
        }


def normalise(text: str) -> tuple[str, list[str]]:
    """``text`` normalised, and the rules that changed it (``NORMALISING``)."""
    changed = []

    def step(rule: str, new: str) -> None:
        nonlocal text
        if new != text:
            changed.append(rule)
            text = new

    if "\x1b" in text:
        step("escape_sequence", _ANSI.sub("", text))
    if "\x08" in text:
        new, old = text, None
        while old != new and "\x08" in new:  # a run of backspaces: one character each
            old, new = new, _OVERSTRIKE.sub("", new)
        step("overstrike", new)
    if "\x0c" in text:
        step("form_feed", text.replace("\x0c", "\n"))
    step("control", _CONTROL.sub("", text))
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        step("nfc", unicodedata.normalize("NFC", text))
    step("trailing_space", _TRAILING.sub("", text).rstrip())
    return text, changed


def pieces(text: str, limit: int) -> list[tuple[int, str]]:
    """``text`` as pieces of at most ``limit`` characters, each with its offset in ``text``:
    whole paragraphs (blank-line separated) packed together, a longer paragraph by lines, a
    longer line at its last space within the limit (or at the limit)."""
    if len(text) <= limit:
        return [(0, text)]
    units = [(m.start(), m.group()) for m in re.finditer(r"\S(?:.|\n(?![ \t]*\n))*", text)]
    for sep in ("\n", " "):
        units = [part for start, unit in units for part in _cut(start, unit, limit, sep)]
    out: list[tuple[int, str]] = []
    for start, unit in units:
        if out and start + len(unit) - out[-1][0] <= limit:
            begin = out[-1][0]
            out[-1] = (begin, text[begin : start + len(unit)])
        else:
            out.append((start, unit))
    return out


def _cut(start: int, unit: str, limit: int, sep: str) -> list[tuple[int, str]]:
    """``unit`` (at ``start``) in parts of at most ``limit`` characters, cut after ``sep``
    where there is one (a space: at any character when not)."""
    parts = []
    while len(unit) > limit:
        at = unit.rfind(sep, 1, limit + 1)
        if at <= 0:
            if sep == "\n":
                break  # a line too long: cut at spaces next
            at = limit
        head = unit[:at].rstrip()
        if head:
            parts.append((start, head))
        rest = unit[at:]
        skip = len(rest) - len(rest.lstrip())
        start, unit = start + at + skip, rest[skip:]
    if unit:
        parts.append((start, unit))
    return parts


def piece_id(record_id: str | None, k: int, n: int) -> str | None:
    """A piece's id: derived (None) from its masked text, else the input's id and its number."""
    return record_id if record_id is None or n == 1 else f"{record_id}#{k}"


def prepare_text(
    text: str, rules: Rules, stats: Stats, source: str, file: str, line: int
) -> list[tuple[int, str]]:
    """One document normalised and split: its pieces with the line each starts at (a document
    number, < 0, stays); none when it is left empty."""
    stats.documents_in += 1
    stats.chars_in += len(text)
    if rules.normalise:
        text, changed = normalise(text)
        for rule in changed:
            stats.count(rule, source, file, line)
        if not text and changed:  # an empty input is refused by the checks, as it was
            stats.count("empty_after_normalising", source, file, line)
            return []
    if not rules.split_long or len(text) <= rules.max_chars:
        return [(line, text)]
    parts = pieces(text, rules.max_chars)
    stats.split_documents += 1
    stats.split_pieces += len(parts)
    if line < 0:
        return [(line, part) for _, part in parts]
    return [(line + text.count("\n", 0, start), part) for start, part in parts]


def prepare(batch: TextBatch, rules: Rules, stats: Stats) -> TextBatch:
    """A batch of plain-text documents normalised and split (``prepare_text``): only those
    that may need it go through Python."""
    n = len(batch.text)
    sources = [batch.source] * n if isinstance(batch.source, str) else list(batch.source)
    files = [batch.file] * n if isinstance(batch.file, str) else list(batch.file)
    lines = np.ones(n, np.int64) if batch.line is None else np.asarray(batch.line, np.int64)
    lengths = pc.utf8_length(batch.text).to_numpy(False) if n else np.zeros(0, np.int64)
    stats.documents_in += n
    stats.chars_in += int(lengths.sum())
    need = np.zeros(n, bool)
    if rules.normalise and n:
        need = ~pc.string_is_ascii(batch.text).to_numpy(False)
        need |= pc.match_substring_regex(batch.text, _MAY_NEED).to_numpy(False)
    if rules.split_long:
        need |= lengths > rules.max_chars
    rows = np.flatnonzero(need)
    if not len(rows):
        return screened(TextBatch(batch.text, sources, files, lines), rules, stats)
    texts: list[Any] = batch.text.to_pylist() if len(rows) > n // 4 else None
    out_text, out_source, out_file, out_line = [], [], [], []
    last = 0
    for i in rows.tolist():
        if last < i:  # the documents before it, as they are
            out_text.append(batch.text.slice(last, i - last))
            out_source += sources[last:i]
            out_file += files[last:i]
            out_line.append(lines[last:i])
        text = texts[i] if texts is not None else batch.text[i].as_py()
        stats.documents_in -= 1  # counted for the batch above
        stats.chars_in -= len(text)
        done = prepare_text(text, rules, stats, sources[i], files[i], int(lines[i]))
        out_text.append(pa.array([t for _, t in done], batch.text.type))
        out_source += [sources[i]] * len(done)
        out_file += [files[i]] * len(done)
        out_line.append(np.array([at for at, _ in done], np.int64))
        last = i + 1
    if last < n:
        out_text.append(batch.text.slice(last))
        out_source += sources[last:]
        out_file += files[last:]
        out_line.append(lines[last:])
    text = pa.concat_arrays(out_text)
    return screened(TextBatch(text, out_source, out_file, np.concatenate(out_line)), rules, stats)


def screened(batch: TextBatch, rules: Rules, stats: Stats) -> TextBatch:
    """``batch`` (normalised and split: a source, file and line a document) less the documents
    a rule of ``filters`` removes, each counted with what was measured."""
    keep = kept_rows(batch, rules, stats)
    if keep is None:
        return batch
    rows = np.flatnonzero(keep).tolist()
    return TextBatch(
        batch.text.filter(pa.array(keep)),
        [batch.source[i] for i in rows],
        [batch.file[i] for i in rows],
        np.asarray(batch.line)[keep],
    )


def kept_rows(batch: TextBatch, rules: Rules, stats: Stats) -> np.ndarray | None:
    """Which documents of ``batch`` the rules of ``filters`` keep (None: all); the others
    counted."""
    if not rules.screen or not len(batch.text):
        return None
    rule, detail = filters.screen(batch.text, rules.screen)
    drop = np.flatnonzero(rule >= 0)
    if not len(drop):
        return None
    for i in drop.tolist():
        name = filters.RULES[rule[i]]
        stats.count(name, batch.source[i], batch.file[i], int(batch.line[i]), **detail[i])
    return rule < 0


def prepare_records(
    items: list[Any], rules: Rules, stats: Stats
) -> list[tuple[dict[str, Any], str, int]]:
    """Records (``sources.Located``) normalised, split and screened together (the rules run
    for a batch at a time): each piece kept, with its file and line. A record whose text is not
    a string is kept as it is (the checks refuse it)."""
    pieces_of: list[list[tuple[int, str]]] = []
    texts, src, files, lines = [], [], [], []
    for item in items:
        rec = item.rec
        if not isinstance(rec["text"], str):
            pieces_of.append([])
            continue
        source = rec.get("source") or ""
        parts = prepare_text(rec["text"], rules, stats, source, item.file, item.line)
        pieces_of.append(parts)
        for line, text in parts:
            texts.append(text)
            src.append(source)
            files.append(item.file)
            lines.append(line)
    batch = TextBatch(pa.array(texts, pa.string()), src, files, np.array(lines, np.int64))
    keep = kept_rows(batch, rules, stats)
    row, out = 0, []
    for item, parts in zip(items, pieces_of, strict=True):
        rec = item.rec
        if not isinstance(rec["text"], str):
            out.append((rec, item.file, item.line))
            continue
        for k, (line, text) in enumerate(parts, 1):
            if keep is None or keep[row]:
                piece = {**rec, "id": piece_id(rec["id"], k, len(parts)), "text": text}
                out.append((piece, item.file, line))
            row += 1
    return out


# Near duplicates -------------------------------------------------------------------------

_MINHASH: dict[int, Any] = {}


def _template(num_perm: int):
    """A MinHash whose permutations every signature shares (generating them costs ~1 ms)."""
    if num_perm not in _MINHASH:
        from datasketch import MinHash

        _MINHASH[num_perm] = MinHash(num_perm=num_perm, seed=1)
    return _MINHASH[num_perm]


def _identity(value: Any) -> Any:
    return value


def _grams(text: pa.Array, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A 32-bit hash of each word n-gram of each text (lower-cased, split at ASCII whitespace:
    ``quality.ngrams``), for a whole batch at once, and the text each is of (ascending)."""
    grams, doc, _ = quality.ngrams(quality.words(pc.utf8_lower(text)), n)
    return (grams ^ (grams >> np.uint64(32))).astype(np.uint32), doc


def shingles(text: str, n: int) -> np.ndarray | None:
    """The n-gram hashes of one text (``_grams``), or None for one of fewer than ``n`` words."""
    grams, _ = _grams(pa.array([text], pa.string()), n)
    return grams if len(grams) else None


def signature(text: str, rules: Rules) -> np.ndarray | None:
    """The MinHash signature of one text (``signatures``)."""
    return signatures(pa.array([text], pa.string()), rules)[0]


def signatures(text: pa.Array, rules: Rules) -> list[np.ndarray | None]:
    """The MinHash signature (``rules.num_perm`` uint32) of each text's word n-grams (None for a
    text of fewer than ``rules.ngram`` words): what ``datasketch.MinHash.update_batch`` computes
    (its affine32 scheme: its pre-mix and its permutations) for the n-grams of the whole batch at
    once, instead of a Python call an n-gram (which cost five times the rest of the stage;
    ``tests/test_curate.py`` checks the two agree)."""
    from datasketch.minhash import _fmix

    grams, doc = _grams(text, rules.ngram)
    a, b = _template(rules.num_perm).permutations
    mixed = _fmix(grams, 32)
    sig = np.full((len(text), rules.num_perm), np.iinfo(np.uint32).max, np.uint32)
    step = 8192  # 4 MB of permuted values at a time (at 128)
    for at in range(0, len(mixed), step):
        values = a[:, None] * mixed[None, at : at + step]  # a permutation a row (8x faster)
        values += b[:, None]  # wrapping: mod 2^32
        of = doc[at : at + step]
        first = np.flatnonzero(np.r_[True, of[1:] != of[:-1]])  # each text's run
        texts = of[first]
        sig[texts] = np.minimum(sig[texts], np.minimum.reduceat(values, first, axis=1).T)
    signed = np.bincount(doc, minlength=len(text)) > 0
    return [sig[i] if signed[i] else None for i in range(len(text))]


@dataclass
class Pending:
    """A batch's part still to decide in the stage's process: its curation counts and the
    signatures of the documents it wrote (rows of its profile columns, in order)."""

    stats: Stats
    sigs: list[np.ndarray | None] | None

    def merge(self, other: Pending) -> None:
        self.stats.merge(other.stats)
        if self.sigs is not None and other.sigs is not None:
            self.sigs += other.sigs


def process_batch(
    batch: TextBatch,
    rules: Rules | None,
    kind: Kind,
    salt: tuple[str, float, float],
    pii: Any,
    checked: Any,
) -> Done:
    """``columnar.process`` with the per-document curation before it (in a worker too)."""
    if rules is None:
        return process(batch, kind, salt, pii, checked)
    stats = Stats(rules.examples)
    batch = prepare(batch, rules, stats)
    sigs = signatures(batch.text, rules) if rules.near else None
    done = process(batch, kind, salt, pii, checked)
    if sigs is not None and done.rows is not None:  # dropped for their personal data
        sigs = [sigs[i] for i in done.rows.tolist()]
    done.curation = Pending(stats, sigs)
    return done


class _Rows:
    """A growing table of uint32 rows in blocks of 4096 (no Python object a row)."""

    def __init__(self, width: int):
        self.width, self.blocks, self.n = width, [], 0

    def append(self, row: np.ndarray | None) -> None:
        if self.n % 4096 == 0:
            self.blocks.append(np.zeros((4096, self.width), np.uint32))
        if row is not None:
            self.blocks[-1][self.n % 4096] = row
        self.n += 1

    def row(self, k: int) -> np.ndarray:
        return self.blocks[k // 4096][k % 4096]


class Deduper:
    """Exact and near-duplicate decisions, in input order, in the stage's process."""

    def __init__(self, rules: Rules, salt: tuple[str, float, float], stats: Stats):
        self.rules, self.salt, self.stats = rules, salt, stats
        self.seen: dict[int, int] = {}  # text hash -> the kept document's number
        self.kept: list[tuple[str | None, int, str]] = []  # (file, line, id) of each kept
        self.sigs = _Rows(rules.num_perm)  # the kept documents' signatures, by number
        self.lsh = None
        if rules.near:
            from datasketch import MinHash, MinHashLSH

            # One MinHash carries each signature to the index (a new one a document cost more
            # than the index's work).
            self.carrier = MinHash(num_perm=rules.num_perm, seed=1)

            # A band's bucket by Python's hash of it (an int) instead of its 64 bytes: a
            # kilobyte less a kept document at 128 permutations. The hash differs between runs
            # (PYTHONHASHSEED) but only says which documents to compare, and every candidate is
            # confirmed on the signatures: the decisions are the same (a 64-bit collision aside).
            self.lsh = MinHashLSH(threshold=rules.threshold, num_perm=rules.num_perm, hashfunc=hash)

    def keep(
        self, text_hash: int, sig: np.ndarray | None, rid: str, source: str, file: str, line: int
    ) -> bool:
        """Whether this document is kept (the first of its copies); counted when not."""
        rules = self.rules
        if rules.exact and text_hash in self.seen:
            self._removed("exact_duplicate", self.seen[text_hash], rid, source, file, line)
            return False
        mh = None
        if self.lsh is not None and sig is not None:
            mh = self.carrier
            mh.hashvalues = sig  # the index reads the values at each call, keeps none of mh
            for other in sorted(self.lsh.query(mh)):  # the first kept in input order
                if float(np.mean(self.sigs.row(other) == sig)) >= rules.threshold:
                    self._removed("near_duplicate", other, rid, source, file, line)
                    return False
        number = len(self.kept)
        self.kept.append((file, line, rid))
        if rules.exact:
            self.seen[text_hash] = number
        if self.lsh is not None:
            if mh is not None:
                self.lsh.insert(number, mh, check_duplication=False)
            self.sigs.append(sig)  # (a text too short to sign: zeros, never a candidate)
        return True

    def _removed(self, rule: str, kept: int, rid: str, source: str, file: str, line: int) -> None:
        k_file, k_line, k_id = self.kept[kept]
        self.stats.count(
            rule, source, file, line, id=rid, kept=k_id, kept_where=located(k_file, k_line)
        )

    def apply(self, done: Done) -> Done:
        """``done`` less the duplicates among its documents; its curation counts merged."""
        pending: Pending | None = done.curation
        if pending is None:
            return done
        self.stats.merge(pending.stats)
        cols = done.cols
        if not cols:
            return done
        ids = [i for c in cols for i in c["id"].to_pylist()]
        hashes = np.concatenate([np.asarray(c["text_hash"]) for c in cols]).tolist()
        sources = [s for c in cols for s in c["source"].to_pylist()]
        files = [f for c in cols for f in c["file"].to_pylist()]
        lines = np.concatenate([np.asarray(c["line"]) for c in cols]).tolist()
        sigs = pending.sigs or [None] * len(ids)
        keep = np.array(
            [
                self.keep(hashes[r], sigs[r], ids[r], sources[r], files[r], lines[r])
                for r in range(len(ids))
            ],
            bool,
        )
        if keep.all():
            return done
        return _filtered(done, keep, ids, self.salt)


def _filtered(done: Done, keep: np.ndarray, ids: list[str], salt: tuple[str, float, float]) -> Done:
    """``done`` with only the rows ``keep`` marks: its profile columns and its JSON lines."""
    new_cols, at = [], 0
    for c in done.cols:
        n = len(c["id"])
        mask = keep[at : at + n]
        at += n
        new_cols.append(
            {
                k: (v.filter(pa.array(mask)) if isinstance(v, pa.Array) else np.asarray(v)[mask])
                for k, v in c.items()
            }
        )
    codes = split_codes([i.encode() for i in ids], *salt)
    counts, lines = {}, {}
    for k, split in enumerate(SPLITS):
        mine = keep[codes == k]
        counts[split] = int(mine.sum())
        if split in done.lines:
            rows = done.lines[split].split(b"\n")[:-1]
            lines[split] = b"".join(r + b"\n" for r, ok in zip(rows, mine, strict=True) if ok)
        if split in done.parts:
            _filter_file(done.parts[split], mine)
    return Done(new_cols, lines, counts, done.tally, done.parts)


def _filter_file(path: Path, mine: np.ndarray) -> None:
    """Keep the lines of ``path`` that ``mine`` marks (a worker's part file, streamed)."""
    tmp = path.with_suffix(".kept")
    with path.open("rb") as src, tmp.open("wb") as dst:
        for line, ok in zip(src, mine, strict=True):
            if ok:
                dst.write(line)
    tmp.replace(path)


def text_hash(text: str) -> int:
    """The profile's hash of a text as written (``expectations.Profile.add``)."""
    return int.from_bytes(text_digest(text.encode("utf-8", "surrogatepass"))[:8])
