"""The per-document removal rules of curation, after normalising and splitting: quality
(``lmforge.data.quality``), language (``lmforge.data.langid``) and decontamination.

Decontamination: a corpus document that shares a word n-gram (``data.decontaminate_ngram``
words, 13 by default as in GPT-3's, lower-cased, split at whitespace) with a text the task is
evaluated on (the labelled validation and test texts, and the validation and test pairs of
``finetune.sft_data`` when it is set) is removed, so no evaluation measures text the model
pretrained on. The evaluation texts' n-grams are 64-bit hashes in a sorted array (8 bytes an
n-gram), shipped to the worker processes with the rules; a text of fewer words than ``n`` has
none and contaminates nothing.

Every rule looks at one document at a time, so the decisions depend on the config and the data
only, never on the order or the number of workers. A document removed is counted under the
first rule it fails, in the order of ``RULES``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lmforge.data import quality

RULES = (*quality.RULES, "language", "contaminated")


@dataclass(frozen=True)
class Screen:
    """What the rules need in a worker process (picklable): None where a rule is off."""

    quality: quality.Thresholds | None
    languages: tuple[str, ...]  # empty: every language kept
    min_language_probability: float
    contamination_ngram: int
    contaminants: np.ndarray | None  # sorted n-gram hashes of the evaluation texts

    def __bool__(self) -> bool:
        return self.quality is not None or bool(self.languages) or self.contaminants is not None


NO_SCREEN = Screen(None, (), 0.5, 13, None)  # every rule off


def evaluation_ngrams(texts: Iterable[str], n: int) -> np.ndarray:
    """The sorted, distinct n-gram hashes of the evaluation texts (``Screen.contaminants``)."""
    found = [np.zeros(0, np.uint64)]
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == 4096:
            found.append(_ngrams(pa.array(batch, pa.string()), n)[0])
            batch = []
    if batch:
        found.append(_ngrams(pa.array(batch, pa.string()), n)[0])
    return np.unique(np.concatenate(found))


def _ngrams(text: pa.Array, n: int) -> tuple[np.ndarray, np.ndarray]:
    grams, doc, _ = quality.ngrams(quality.words(pc.utf8_lower(text)), n)
    return grams, doc


def screen(text: pa.Array, s: Screen) -> tuple[np.ndarray, list[dict]]:
    """Per text, the rule of ``RULES`` it fails first (its index; -1: kept) and what was
    measured (the detail a report example shows)."""
    n = len(text)
    rule = np.full(n, -1, np.int64)
    detail: list[dict] = [{} for _ in range(n)]
    if not n:
        return rule, detail
    # the words of the lower-cased texts, split once for quality and decontamination (the
    # quality measures are of the lower-cased text: repeated lines and n-grams ignore case)
    lowered = pc.utf8_lower(text)
    w = quality.words(lowered)
    if s.quality is not None:
        failed, value = quality.judge(lowered, s.quality, w)
        for i in np.flatnonzero(failed >= 0).tolist():
            rule[i] = failed[i]
            detail[i] = {"measured": round(float(value[i]), 4)}
    if s.languages:
        from lmforge.data import langid

        rest = np.flatnonzero(rule < 0)
        found, prob = langid.identify(text.take(pa.array(rest)))
        for j, i in enumerate(rest.tolist()):
            if found[j] not in s.languages and prob[j] >= s.min_language_probability:
                rule[i] = RULES.index("language")
                detail[i] = {"language": found[j], "probability": round(float(prob[j]), 3)}
    if s.contaminants is not None and len(s.contaminants):
        grams, doc, _ = quality.ngrams(w, s.contamination_ngram)
        at = np.minimum(np.searchsorted(s.contaminants, grams), len(s.contaminants) - 1)
        hit = s.contaminants[at] == grams  # (a small sorted array: binary search is fastest)
        shared = np.bincount(doc[hit], minlength=n)
        for i in np.flatnonzero((shared > 0) & (rule < 0)).tolist():
            rule[i] = RULES.index("contaminated")
            detail[i] = {"shared_ngrams": int(shared[i])}
    return rule, detail
