"""Heuristic quality filters of the corpus (curation, ``data.quality_*``), from published recipes.

Each rule measures one thing per document and removes the documents past its threshold:

| rule | measure | recipe (its threshold) |
| --- | --- | --- |
| ``too_few_words``, ``too_many_words`` | words (runs of non-space) | Gopher: 50 to 100,000 |
| ``mean_word_length`` | mean characters a word | Gopher: 3 to 10 |
| ``symbol_ratio`` | ``#`` and ellipses (``...``, ``…``) a word | Gopher: at most 0.1 |
| ``unpunctuated_lines`` | share of lines ending in terminal punctuation (``. ! ? " '`` and the
  closing quotes and ``…``), documents of ``PUNCT_MIN_LINES`` lines or more | C4 (per line),
  FineWeb (per document: at least 0.12) |
| ``duplicate_lines`` | share of lines that repeat an earlier line of the document | Gopher: at
  most 0.3 |
| ``top_2gram`` | characters of the most frequent repeated word 2-gram, of the text's | Gopher:
  at most 0.2 |
| ``duplicate_5grams`` | characters of the words in word 5-grams that occur more than once
  in the text (each word counted once), of the text's | Gopher: at most 0.15 |

Gopher: Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training
Gopher", appendix A.1.1; C4: Raffel et al. 2020 (T5), section 2.2; FineWeb: Penedo et al. 2024,
its custom filters. The implementations follow datatrove's (``GopherQualityFilter``,
``GopherRepetitionFilter``, ``C4QualityFilter``, ``FineWebQualityFilter``), computed here for a
whole batch of documents at once by numpy over their UTF-8 bytes: a Python loop a word would
cost more than the rest of the validate stage. Words and lines are split at ASCII whitespace and
line ends, characters counted as UTF-8 lead bytes; n-grams and lines compared by 64-bit hashes.

The defaults are conservative: each threshold keeps every document of the shipped corpus
(``data/``) and of the test fixtures, and removes only what is clearly not prose (lists of
symbols, a line repeated, a phrase repeated, tables of numbers). The recipes' own thresholds are
those of the table (``docs/data.md#curation`` says what each removes from the shipped corpus).
The word-based measures assume a language written with spaces between words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from lmforge.data.columnar import _bytes_of

PUNCT_MIN_LINES = 5  # fewer lines say little about a document's punctuation
_TERMINAL_ASCII = np.frombuffer(b".!?\"'", np.uint8)
_TERMINAL_WIDE = [c.encode() for c in "”’…»"]  # 2 or 3 bytes each

# Word and line hashes by numpy: each byte weighted by a fixed random number for its place in
# the word (mod 64), summed a word, then mixed (a Python call a word cost more than the rest of
# validate).
_WEIGHTS = np.random.RandomState(20261207).randint(1, 2**63, 64, dtype=np.uint64) | np.uint64(1)
_PRIME = np.uint64(0x100000001B3)


def _mix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: every bit of a word's sum reaches every bit."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


@dataclass
class Tokens:
    """The runs of a batch's bytes between separators (words or lines), for all texts at once:
    where each starts and ends in ``raw``, its hash, and the text it is of (ascending)."""

    starts: np.ndarray
    ends: np.ndarray
    hashes: np.ndarray
    doc: np.ndarray


def tokens(raw: np.ndarray, offsets: np.ndarray, sep: np.ndarray) -> Tokens:
    """The runs of non-``sep`` bytes of each text (``raw`` from offset 0)."""
    inside = ~sep
    first = inside.copy()
    first[1:] &= sep[:-1]
    last = inside.copy()
    last[:-1] &= sep[1:]
    begins = offsets[:-1][offsets[:-1] < offsets[1:]]  # a text's first byte starts a run
    first[begins] = inside[begins]
    ends = offsets[1:][offsets[:-1] < offsets[1:]] - 1  # its last ends one
    last[ends] = inside[ends]
    starts, stops = np.flatnonzero(first), np.flatnonzero(last) + 1
    if not len(starts):
        empty = np.zeros(0, np.int64)
        return Tokens(empty, empty, np.zeros(0, np.uint64), empty)
    run = np.cumsum(first) - 1  # the run each byte is in (or follows)
    place = np.arange(len(raw)) - starts[np.maximum(run, 0)]
    values = (raw.astype(np.uint64) + np.uint64(1)) * _WEIGHTS[place & 63]
    values[sep] = 0
    hashes = _mix64(np.add.reduceat(values, starts))
    doc = np.searchsorted(offsets, starts, side="right") - 1
    return Tokens(starts, stops, hashes, doc)


def batch_bytes(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A string array's UTF-8 bytes from offset 0 and its offsets into them."""
    raw, offsets = _bytes_of(text)
    return raw[offsets[0] : offsets[-1]], offsets - offsets[0]


def spaces(raw: np.ndarray) -> np.ndarray:
    return (raw == 0x20) | ((raw - np.uint8(9)) < 5)  # space, \t \n \v \f \r


def words(text: pa.Array) -> Tokens:
    """The words of each text (split at ASCII whitespace), their hashes of the bytes as given."""
    raw, offsets = batch_bytes(text)
    return tokens(raw, offsets, spaces(raw))


def ngrams(w: Tokens, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 64-bit hash of each word n-gram within a text (an order-dependent combination of its
    words' hashes), the text it is of and the index of its first word."""
    m = len(w.hashes) - n + 1
    if m < 1:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    acc = np.zeros(m, np.uint64)
    for k in range(n):
        acc = acc * _PRIME + w.hashes[k : k + m]
    within = np.flatnonzero(w.doc[:m] == w.doc[n - 1 :])
    return _mix64(acc[within]), w.doc[within], within


def _keyed(doc: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """One 64-bit key for a hash within a text (one sort instead of a lexsort on two keys)."""
    return _mix64(hashes ^ (doc.astype(np.uint64) * _PRIME))


def _counts(doc: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """How often each item's hash occurs in its text (one unstable sort: the fastest)."""
    if not len(doc):
        return np.zeros(0, np.int64)
    _, inverse, counts = np.unique(_keyed(doc, hashes), return_inverse=True, return_counts=True)
    return counts[inverse]


def _per_text_max(doc: np.ndarray, value: np.ndarray, n: int) -> np.ndarray:
    """Per text, the largest ``value`` of its items (``doc`` ascending; 0 for none)."""
    out = np.zeros(n)
    if len(doc):
        at = np.flatnonzero(np.r_[True, doc[1:] != doc[:-1]])
        out[doc[at]] = np.maximum.reduceat(value, at)
    return out


@dataclass
class Measures:
    """Each quality measure of each text of a batch (module doc)."""

    words: np.ndarray
    mean_word_length: np.ndarray
    symbol_ratio: np.ndarray
    lines: np.ndarray
    punctuated_lines: np.ndarray
    duplicate_lines: np.ndarray
    top_2gram: np.ndarray
    duplicate_5grams: np.ndarray


def _share(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    return np.divide(part, whole, out=np.zeros(len(whole)), where=whole > 0)


def measure(text: pa.Array, w: Tokens | None = None) -> Measures:
    """The quality measures of a batch of texts, by numpy over their bytes (``w``: their
    ``words``, when already split)."""
    n = len(text)
    raw, offsets = batch_bytes(text)
    lead = (raw & 0xC0) != 0x80  # a character's first byte
    chars_before = np.concatenate([[0], np.cumsum(lead)])
    text_chars = chars_before[offsets[1:]] - chars_before[offsets[:-1]]
    w = tokens(raw, offsets, spaces(raw)) if w is None else w
    word_chars = chars_before[w.ends] - chars_before[w.starts]
    n_words = np.bincount(w.doc, minlength=n)
    mean_len = _share(np.bincount(w.doc, word_chars, minlength=n), n_words)

    # Gopher's symbols: '#' and ellipses ('...' as one however many dots; '…')
    dot = raw == 0x2E
    run = dot[:-2] & dot[1:-1] & dot[2:]
    run[1:] &= ~dot[:-3]
    ellipsis = np.flatnonzero(run)
    wide = np.flatnonzero((raw[2:] == 0xA6) & (raw[1:-1] == 0x80) & (raw[:-2] == 0xE2))
    symbols = np.concatenate([np.flatnonzero(raw == 0x23), ellipsis, wide])
    per_text = np.bincount(np.searchsorted(offsets, symbols, side="right") - 1, minlength=n)
    symbol_ratio = _share(per_text, n_words)

    lines = tokens(raw, offsets, raw == 0x0A)
    n_lines = np.bincount(lines.doc, minlength=n)
    end = raw[lines.ends - 1]
    punct = np.isin(end, _TERMINAL_ASCII)
    for mark in _TERMINAL_WIDE:
        k = len(mark)
        tail = lines.ends - k >= lines.starts
        at = np.flatnonzero(tail)
        same = np.ones(len(at), bool)
        for j, byte in enumerate(mark):
            same &= raw[lines.ends[at] - k + j] == byte
        punct[at[same]] = True
    punctuated = _share(np.bincount(lines.doc, punct, minlength=n), n_lines)
    # a line that occurs c times repeats an earlier one c - 1 times: (c - 1) / c an occurrence
    seen = _counts(lines.doc, lines.hashes)
    dup_lines = _share(np.bincount(lines.doc, (seen - 1) / np.maximum(seen, 1), n), n_lines)

    # the most frequent repeated 2-gram's characters (with its space), of the text's
    grams, doc, first = ngrams(w, 2)
    seen = _counts(doc, grams)
    size = word_chars[first] + word_chars[np.minimum(first + 1, len(word_chars) - 1)] + 1
    top = _per_text_max(doc, np.where(seen > 1, seen * size, 0).astype(float), n)
    top_share = _share(top, text_chars)

    # the characters of the words in repeated 5-grams (every occurrence, each word once: the
    # Gopher paper's definition), of the text's
    grams, doc, first = ngrams(w, 5)
    again = first[_counts(doc, grams) > 1]
    m = len(w.hashes) + 5
    cover = np.bincount(again, minlength=m) - np.bincount(again + 5, minlength=m)
    covered = np.cumsum(cover)[: len(w.hashes)] > 0
    dup = np.bincount(w.doc, np.where(covered, word_chars, 0), minlength=n)
    dup_share = _share(dup, text_chars)
    return Measures(
        n_words, mean_len, symbol_ratio, n_lines, punctuated, dup_lines, top_share, dup_share
    )


@dataclass(frozen=True)
class Thresholds:
    """The ``data.quality_*`` thresholds (0 or 1 where a rule is off: module doc)."""

    min_words: int
    max_words: int
    min_mean_word_length: float
    max_mean_word_length: float
    max_symbol_ratio: float
    min_punctuated_lines: float
    max_duplicate_lines: float
    max_top_2gram: float
    max_duplicate_5grams: float


RULES = (
    "too_few_words",
    "too_many_words",
    "mean_word_length",
    "symbol_ratio",
    "unpunctuated_lines",
    "duplicate_lines",
    "top_2gram",
    "duplicate_5grams",
)


def judge(text: pa.Array, t: Thresholds, w: Tokens | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per text, the first rule of ``RULES`` it fails (its index, -1: none) and its measure
    (``w``: the texts' ``words``, when already split)."""
    m = measure(text, w)
    has_words = m.words > 0
    tests = [  # a text of no word at all is left to the checks (an empty text is refused)
        (has_words & (m.words < t.min_words), m.words),
        (m.words > t.max_words, m.words),
        (
            has_words
            & (
                (m.mean_word_length < t.min_mean_word_length)
                | (m.mean_word_length > t.max_mean_word_length)
            ),
            m.mean_word_length,
        ),
        (m.symbol_ratio > t.max_symbol_ratio, m.symbol_ratio),
        (
            (m.lines >= PUNCT_MIN_LINES) & (m.punctuated_lines < t.min_punctuated_lines),
            m.punctuated_lines,
        ),
        (m.duplicate_lines > t.max_duplicate_lines, m.duplicate_lines),
        (m.top_2gram > t.max_top_2gram, m.top_2gram),
        (m.duplicate_5grams > t.max_duplicate_5grams, m.duplicate_5grams),
    ]
    rule = np.full(len(text), -1, np.int64)
    value = np.zeros(len(text))
    for k, (fails, measured) in reversed(list(enumerate(tests))):  # the first rule wins
        rule[fails] = k
        value[fails] = measured[fails]
    return rule, value
