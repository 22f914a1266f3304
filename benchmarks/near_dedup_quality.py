"""Near-duplicate removal's recall and precision on a synthetic set with known near copies.

300 originals of four 80-word paragraphs (random words of the tests' vocabulary), 300 unrelated
documents of the same kind, and one copy of each original changed in one way: words edited
(1%, 5%, 10% replaced), paragraphs reordered (the first moved last), a boilerplate header and
footer added, or words dropped (5%). The copies come after every original and unrelated
document, so removal keeps the originals (``lmforge.data.curate.Deduper``, in input order).
Recall: copies removed / copies; precision: copies removed / documents removed (undefined,
``-``, when none was removed). For each
``data.near_dedup_threshold`` and n-gram size, at 128 permutations (the default).

    .venv/bin/python benchmarks/near_dedup_quality.py

Results: benchmarks/results/near_dedup_quality.json and the table printed (docs/data.md#curation).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from data_fixtures import WORDS  # noqa: E402

from lmforge.data import curate  # noqa: E402

N = 300
CHANGES = ("edit_1pct", "edit_5pct", "edit_10pct", "reorder", "boilerplate", "drop_5pct")


def document(rng: random.Random) -> str:
    return "\n\n".join(" ".join(rng.choices(WORDS, k=80)) for _ in range(4))


def changed(rng: random.Random, text: str, how: str) -> str:
    words = text.split(" ")
    if how.startswith("edit"):
        share = int(how.split("_")[1].removesuffix("pct")) / 100
        for i in rng.sample(range(len(words)), round(share * len(words))):
            words[i] = "changed"
        return " ".join(words)
    if how == "reorder":
        paras = text.split("\n\n")
        return "\n\n".join(paras[1:] + paras[:1])
    if how == "boilerplate":
        return f"Copyright notice. All rights reserved.\n\n{text}\n\nPrinted from the archive."
    drop = set(rng.sample(range(len(words)), round(0.05 * len(words))))
    return " ".join(w for i, w in enumerate(words) if i not in drop)


def measure(threshold: float, ngram: int, how: str) -> dict:
    rng = random.Random(f"{how}-1")
    originals = [document(rng) for _ in range(N)]
    others = [document(rng) for _ in range(N)]
    copies = [changed(rng, text, how) for text in originals]
    docs = originals + others + copies
    rules = curate.Rules(True, True, 200_000, True, True, threshold, ngram, 128, 0)
    sigs = curate.signatures(pa.array(docs), rules)
    dedup = curate.Deduper(rules, ("s", 0.05, 0.05), curate.Stats(0))
    kept = [dedup.keep(i, s, str(i), "src", "f", i + 1) for i, s in enumerate(sigs)]
    removed = {i for i, k in enumerate(kept) if not k}
    truth = set(range(2 * N, 3 * N))
    found = len(removed & truth)
    precision = round(found / len(removed), 3) if removed else None  # none removed: undefined
    return {"recall": round(found / N, 3), "precision": precision}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    results = []
    for threshold in (0.75, 0.85):
        for ngram in (3, 5):
            row = {"threshold": threshold, "ngram": ngram}
            for how in CHANGES:
                row[how] = measure(threshold, ngram, how)
            results.append(row)
            print(json.dumps(row), flush=True)
    out = ROOT / "benchmarks" / "results" / "near_dedup_quality.json"
    out.write_text(json.dumps({"documents": 3 * N, "permutations": 128, "rows": results}, indent=2))
    print("| threshold | n-gram | " + " | ".join(CHANGES) + " |")
    print("| ---: | ---: | " + " | ".join("---" for _ in CHANGES) + " |")
    for row in results:
        cells = [f"{row[h]['recall']:.2f} / {_fmt(row[h]['precision'])}" for h in CHANGES]
        print(f"| {row['threshold']} | {row['ngram']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
