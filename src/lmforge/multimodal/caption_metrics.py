"""Caption metrics: ROUGE-L and CIDEr-D of generated captions against references, and
image-to-text retrieval recall@k. Pure Python, no torch.

Small, faithful implementations instead of the heavy packages (``rouge-score`` pulls nltk and
absl; ``pycocoevalcap`` needs Java for its tokenizer):

- ``rouge_l``: the F-measure of the longest common subsequence of tokens, as ``rouge-score``'s
  ``rougeL`` without stemming (lower-cased, non-alphanumerics as spaces); with several
  references, the best one counts (an empty candidate scores 0, as there).
- ``cider_d``: CIDEr-D of Vedantam et al. (2015) as ``pycocoevalcap.cider`` computes it: TF-IDF
  vectors of 1..4-grams with document frequencies from the references of the scored set, a
  Gaussian length penalty (sigma 6), clipping of the candidate's counts by the reference's,
  averaged over n and references, times 10. Checked against hand-computed values in the tests.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"[^a-z0-9]+")


def tokens(text: str) -> list[str]:
    return [t for t in _WORD.sub(" ", text.lower()).split() if t]


def rouge_l(candidate: str, references: Sequence[str]) -> float:
    """The best ROUGE-L F1 of ``candidate`` over ``references``, on ``tokens`` (so "frog." and
    "Frog" agree, as in rouge-score); the LCS itself is ``lmforge.metrics.rouge_l``'s."""
    from lmforge.metrics import rouge_l as whitespace_rouge_l

    cand = " ".join(tokens(candidate))
    return max((whitespace_rouge_l(cand, " ".join(tokens(r))) for r in references), default=0.0)


def _ngrams(words: list[str], n_max: int = 4) -> Counter:
    return Counter(
        tuple(words[i : i + n]) for n in range(1, n_max + 1) for i in range(len(words) - n + 1)
    )


def _vector(counts: Counter, df: Counter, log_docs: float):
    """TF-IDF per n-gram order, each order's norm, and the length (as pycocoevalcap)."""
    vec: list[dict] = [{} for _ in range(4)]
    norm = [0.0] * 4
    for gram, tf in counts.items():
        n = len(gram) - 1
        vec[n][gram] = tf * (log_docs - math.log(max(1.0, df[gram])))
        norm[n] += vec[n][gram] ** 2
    length = sum(tf for gram, tf in counts.items() if len(gram) == 2)
    return vec, [math.sqrt(x) for x in norm], length


def _sim(vc, vr, nc, nr, lc, lr, sigma: float = 6.0) -> list[float]:
    delta = lc - lr
    out = []
    for n in range(4):
        val = sum(min(w, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, w in vc[n].items())
        if nc[n] != 0 and nr[n] != 0:
            val /= nc[n] * nr[n]
        out.append(val * math.exp(-(delta**2) / (2 * sigma**2)))
    return out


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """CIDEr-D of each candidate against its references (module doc)."""
    refs = [[_ngrams(tokens(r)) for r in rs] for rs in references]
    df: Counter = Counter()
    for rs in refs:
        df.update({g for r in rs for g in r})
    log_docs = math.log(float(len(refs)))
    scores = []
    for cand, rs in zip(candidates, refs, strict=True):
        vc, nc, lc = _vector(_ngrams(tokens(cand)), df, log_docs)
        total = [0.0] * 4
        for r in rs:
            vr, nr, lr = _vector(r, df, log_docs)
            total = [a + b for a, b in zip(total, _sim(vc, vr, nc, nr, lc, lr), strict=True)]
        scores.append(sum(total) / 4 / max(len(rs), 1) * 10.0)
    return scores


def recall_at(ranks: Sequence[int], k: int) -> float:
    """Share of queries whose right answer ranks within the first ``k`` (rank 0 = first)."""
    return sum(r < k for r in ranks) / max(len(ranks), 1)
