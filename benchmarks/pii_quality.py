"""Precision and recall of the personal-data masking (``lmforge.data.pii``).

1. The synthetic set (``benchmarks/pii_synthetic.py``): every type in the layouts real text
   has, values with known spans, and lookalikes with none. A match counts if its type and span
   are the value's exactly; *masked* counts a value every character of which some match covers
   (what privacy needs, whatever the type said).
2. The shipped labelled set (``data/labelled/spam.jsonl``, ``make data``): precision from the
   hand-judged samples (``benchmarks/results/pii_precision.jsonl``: 100 matches a type of the
   detectors before issue 27, round ``final``; ``pii_precision_issue27.jsonl``: every match the
   issue-27 detectors added, all judged). Recall has no full annotation to be measured against;
   instead the *loose candidates* (every ``x@y.z``, every dotted quad, every run of 7 or more
   digits within 40 characters after a phone word) and the share the detectors cover: the
   candidates left are not all personal data (CVS revisions, ``___@___.___`` form blanks), so
   this is a floor on recall for those populations.

    .venv/bin/python benchmarks/pii_quality.py

Results: benchmarks/results/pii_quality.json and the tables in docs/benchmarks/pii.md.
Precision and recall do not depend on the machine; it is named as every result's is.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks" / "pii.md"
MARK = "<!-- pii_quality.py -->"  # the doc from here on is this script's

LOOSE = {
    "email": re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    "ipv4": re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])"),
}
PHONE_WORD = re.compile(r"(?i)\b(?:tel|tele?phone|phone|fax|mobile|cell|call)\b")
LOOSE_NUMBER = re.compile(r"[+(]?\d[\d ().\/-]{5,}\d")


def synthetic(pii, cases) -> dict:
    per_type: dict[str, Counter] = {}
    per_layout: dict[str, Counter] = {}
    for case in cases:
        found = pii.find(case.text)
        got = {(m.kind, m.start, m.end) for m in found}
        layout = per_layout.setdefault(case.layout, Counter())
        for kind, start, end in case.spans:
            c = per_type.setdefault(kind, Counter())
            hit = (kind, start, end) in got
            covered = all(any(m.start <= i < m.end for m in found) for i in range(start, end))
            c["values"] += 1
            c["tp"] += hit
            c["masked"] += covered
            layout["values"] += 1
            layout["tp"] += hit
            layout["masked"] += covered
        truth = set(case.spans)
        for kind, _start, _end in got - truth:
            per_type.setdefault(kind, Counter())["fp"] += 1
            layout["fp"] += 1
    return {
        "types": {k: _rates(c) for k, c in sorted(per_type.items())},
        "layouts": {k: _rates(c) for k, c in sorted(per_layout.items())},
    }


def _rates(c: Counter) -> dict:
    found = c["tp"] + c["fp"]
    out = {k: c[k] for k in ("values", "tp", "fp", "masked")}
    out["precision"] = round(c["tp"] / found, 3) if found else None
    out["recall"] = round(c["tp"] / c["values"], 3) if c["values"] else None
    out["masked_share"] = round(c["masked"] / c["values"], 3) if c["values"] else None
    return out


def judged(path: Path, round_: str | None = None) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if round_ and row["round"] != round_:
            continue
        out.setdefault(row["type"], Counter())[row["verdict"]] += 1
    return out


def shipped(pii, data: Path) -> dict:
    texts = [
        json.loads(line)["text"]
        for line in (data / "labelled" / "spam.jsonl").open(encoding="utf-8")
    ]
    matches: Counter = Counter()
    left = 0
    loose = {k: Counter() for k in ("email", "ipv4", "phone")}
    for text in texts:
        found = pii.find(text)
        matches.update(m.kind for m in found)
        left += bool(found) and bool(pii.find(pii.replace(text, found)))  # validate's pii_left

        def covered(start: int, end: int, found=found) -> bool:
            return any(m.start < end and start < m.end for m in found)

        for kind, pattern in LOOSE.items():
            for m in pattern.finditer(text):
                loose[kind]["candidates"] += 1
                loose[kind]["covered"] += covered(m.start(), m.end())
        for word in PHONE_WORD.finditer(text):
            m = LOOSE_NUMBER.search(text, word.end(), word.end() + 40)
            if m and sum(ch.isdigit() for ch in m.group()) >= 7:
                loose["phone"]["candidates"] += 1
                loose["phone"]["covered"] += covered(m.start(), m.end())
    before = judged(RESULTS / "pii_precision.jsonl", "final")
    added = judged(RESULTS / "pii_precision_issue27.jsonl")
    types = {}
    for kind in pii.PII_TYPES:
        b, a = before.get(kind, Counter()), added.get(kind, Counter())
        n_added = sum(a.values())
        old = matches[kind] - n_added  # matches the earlier detectors made too (none lost)
        p_old = b["correct"] / sum(b.values()) if sum(b.values()) else None
        est = None
        if matches[kind] and p_old is not None:
            est = round((old * p_old + a["correct"]) / matches[kind], 4)
        elif matches[kind] and n_added == matches[kind]:
            est = round(a["correct"] / n_added, 4)
        types[kind] = {
            "matches": matches[kind],
            "judged_before": sum(b.values()),
            "correct_before": b["correct"],
            "added_by_issue27": n_added,
            "added_correct": a["correct"],
            "precision_estimate": est,
        }
    for c in loose.values():
        c["share"] = round(c["covered"] / c["candidates"], 4) if c["candidates"] else None
    return {
        "records": len(texts),
        "left_after_masking": left,
        "types": types,
        "loose": {k: dict(v) for k, v in loose.items()},
    }


def tables(result: dict) -> str:
    s, d = result["synthetic"], result["shipped"]
    lines = [
        MARK,
        "",
        "## Precision and recall",
        "",
        f"{result['machine']}",
        "",
        "`benchmarks/pii_quality.py`; raw numbers in `benchmarks/results/pii_quality.json`. "
        "Precision and recall do not depend on the machine.",
        "",
        f"### Synthetic set: every type in real-world layouts ({s['cases']} texts, "
        f"{s['per_layout']} a layout, seed {s['seed']})",
        "",
        "`benchmarks/pii_synthetic.py`: values generated valid (Luhn, IBAN check digits, "
        "numbering plans) in the layouts text has them, and lookalikes with none (dates, "
        "versions, prices, order numbers, ISBNs, MAC addresses, verses, BICs alone, prose "
        "with *at* and *dot*). A hit is the exact type and span; *masked*: every character of "
        "the value covered by some match.",
        "",
        "| type | values | hits | false positives | precision | recall | masked |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, r in s["types"].items():
        lines.append(
            f"| {kind} | {r['values']} | {r['tp']} | {r['fp']} | {r['precision']} | "
            f"{r['recall']} | {r['masked_share']} |"
        )
    lines += ["", "Layouts below full recall, and lookalikes with a false positive:", ""]
    lines += ["| layout | values | hits | false positives |", "| --- | ---: | ---: | ---: |"]
    for name, r in s["layouts"].items():
        if r["fp"] or (r["values"] and r["tp"] < r["values"]):
            lines.append(f"| {name} | {r['values']} | {r['tp']} | {r['fp']} |")
    lines += [
        "",
        f"### The shipped labelled set ({d['records']:,} emails)",
        "",
        "Precision: the matches the detectors made before issue 27 from the hand-judged sample "
        "(100 a type, `pii_precision.jsonl`, round `final`), the matches issue 27's detectors "
        "added all judged by hand (`pii_precision_issue27.jsonl`); none was lost. Texts "
        f"with a match left once masked (what validate's `pii_left` refuses): "
        f"{d['left_after_masking']}.",
        "",
        "| type | matches | judged before | correct | added (issue 27) | added correct | "
        "precision (est.) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, r in d["types"].items():
        est = "-" if r["precision_estimate"] is None else f"{r['precision_estimate']:.4f}"
        lines.append(
            f"| {kind} | {r['matches']:,} | {r['judged_before']} | {r['correct_before']} | "
            f"{r['added_by_issue27']} | {r['added_correct']} | {est} |"
        )
    lines += [
        "",
        "Recall, against loose candidates (a floor: what is left is not all personal data):",
        "",
        "| population | candidates | covered by a match | share |",
        "| --- | ---: | ---: | ---: |",
    ]
    names = {
        "email": "every `x@y.z`",
        "ipv4": "every dotted quad",
        "phone": "7+ digits within 40 characters after a phone word",
    }
    for kind, r in d["loose"].items():
        lines.append(f"| {names[kind]} | {r['candidates']} | {r['covered']} | {r['share']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import machine  # benchmarks/machine.py: what the figures were measured on
    import pii_synthetic

    from lmforge.data import pii

    per_layout, seed = 20, 27
    cases = pii_synthetic.cases(per_layout, seed)
    record = machine.describe()
    result = {
        "machine_record": record,
        "machine": machine.line(record),
        "synthetic": {
            "cases": len(cases),
            "per_layout": per_layout,
            "seed": seed,
            **synthetic(pii, cases),
        },
        "shipped": shipped(pii, ROOT / "data"),
    }
    (RESULTS / "pii_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    doc = DOC.read_text(encoding="utf-8")
    head = doc.split(MARK)[0].rstrip("\n")
    DOC.write_text(head + "\n\n" + tables(result), encoding="utf-8")
    print(tables(result))


if __name__ == "__main__":
    main()
