"""Language identification of the corpus (curation, ``data.languages``): py3langid's model.

py3langid (BSD licence; a maintained fork of Lui & Baldwin's langid.py, 97 languages) ships its
naive Bayes model inside its wheel (4.6 MB): nothing is downloaded at run time. Its own
``classify`` walks a byte automaton in a Python loop, 2.5 ms a 1,000-character document; here
the same automaton is walked for a whole batch of documents at once (numpy: one step a byte
position, all documents together), the features counted into a sparse matrix and scored by one
product with the model's table (scipy, which datasketch already needs). The result is the
model's own (``tests/test_langid.py`` checks it against ``classify``).

Only the first ``CHARS`` (500) characters of a document are read: a few sentences show the
language, and the cost stays bounded per document. An all-capitals text is lower-cased first, as
py3langid does. The probability is py3langid's ``norm_probs`` (a softmax of the scores scaled
by the square root of the bytes read).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CHARS = 500  # characters of a document read (a few sentences: enough for prose)
_CHUNK = 1024  # documents walked together (their bytes and features: ~2.5 MB at 500 bytes)
_MODEL: list = []


class _Model:
    """py3langid's model as arrays (loaded once a process: 2 s to decompress)."""

    def __init__(self) -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        self.identifier = ident  # py3langid's own (its classify: the tests' reference)
        self.labels: list[str] = ident.labels
        self.nextmove = np.asarray(ident.tk_nextmove, np.int32)
        self.rowbase = np.asarray(ident._rowbase, np.int32)
        self.output = np.asarray(ident.tk_output, np.int32)
        self.ptc = np.asarray(ident.nb_ptc, np.float32)
        self.pc = np.asarray(ident.nb_pc, np.float32)
        # Labels that appear twice in the model's classes (scripts of one language): each
        # class column scored, then folded into its label's (a 0/1 matrix product).
        self.fold = np.zeros((len(ident.nb_classes), len(self.labels)), np.float32)
        self.fold[
            np.arange(len(ident.nb_classes)), [self.labels.index(c) for c in ident.nb_classes]
        ] = 1


def _model() -> _Model:
    if not _MODEL:
        _MODEL.append(_Model())
    return _MODEL[0]


def labels() -> list[str]:
    """The languages the model knows (ISO 639-1 codes)."""
    return _model().labels


def identify(text: pa.Array) -> tuple[list[str], np.ndarray]:
    """Each text's language (the model's most probable) and its probability."""
    model = _model()
    head = pc.utf8_slice_codeunits(text, 0, CHARS) if len(text) else text
    upper = pc.utf8_is_upper(head).to_numpy(False) if len(text) else np.zeros(0, bool)
    if upper.any():
        head = pc.if_else(pa.array(upper), pc.utf8_lower(head), head)
    from lmforge.data.quality import batch_bytes

    raw, offsets = batch_bytes(head)
    best = np.zeros(len(text), np.int64)
    prob = np.zeros(len(text))
    for at in range(0, len(text), _CHUNK):
        lo, hi = at, min(at + _CHUNK, len(text))
        best[lo:hi], prob[lo:hi] = _score(model, raw, offsets[lo : hi + 1])
    return [model.labels[k] for k in best.tolist()], prob


def _score(model: _Model, raw: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.sparse import csr_matrix

    n, n_feats = len(offsets) - 1, len(model.ptc)
    lengths = offsets[1:] - offsets[:-1]
    width = int(lengths.max()) if n else 0
    place = np.arange(width)
    valid = place[:, None] < lengths[None, :]  # a row a byte position: contiguous steps
    index = np.where(valid, offsets[None, :-1] + place[:, None], 0)
    data = raw[index] if len(raw) else np.zeros((width, n), np.uint8)
    state = np.zeros(n, np.int32)
    feats = np.empty((width, n), np.int32)
    for p in range(width):  # a document's bytes end where valid does: later states unused
        state = model.nextmove[model.rowbase[state] + data[p]]
        feats[p] = model.output[state]
    feats[~valid] = -1
    pos, doc = np.nonzero(feats >= 0)
    # each (document, feature) counted once: one sort of their keys, then the sparse rows
    key, count = np.unique(doc * n_feats + feats[pos, doc], return_counts=True)
    indptr = np.searchsorted(key // n_feats, np.arange(n + 1))
    counts = csr_matrix(
        (np.log1p(count.astype(np.float32)), key % n_feats, indptr), shape=(n, n_feats)
    )
    scores = np.asarray(counts @ model.ptc) + model.pc
    scores *= (1.0 / np.sqrt(np.maximum(lengths, 1)))[:, None]
    scores = np.exp(scores - scores.max(axis=1, keepdims=True))
    scores /= scores.sum(axis=1, keepdims=True)
    folded = scores @ model.fold
    folded[np.diff(indptr) == 0] = 1.0 / len(model.labels)  # no feature: uniform
    best = folded.argmax(axis=1)
    return best, folded[np.arange(n), best]
