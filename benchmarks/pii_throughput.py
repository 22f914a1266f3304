"""The validate stage with personal-data masking (``data.pii: mask``) against without
(``keep``: detection only, for the report), against validate with no detection at all (as it
was before ``lmforge.data.pii``: ``pii.find`` patched to find nothing, under ``keep``), and the
detectors alone, on the default ``data/``.

One process; imports and MLflow's store are set up before timing. Each mode runs ``--repeats``
times, alternating, and the fastest run is kept (the machine is shared: the minimum is the
least disturbed). MB are megabytes of raw text (UTF-8) of the corpus and the labelled set,
which validate reads whole. *Detectors alone* is ``pii.find`` over the same texts, already in
memory (no JSON, no writing, no GX).

    .venv/bin/python benchmarks/pii_throughput.py [--repeats 3]

Results: benchmarks/results/pii_throughput.json and docs/benchmarks/pii.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work" / "pii_throughput"
MODES = ("none", "keep", "mask")


def raw_texts(data: Path) -> list[str]:
    paths = [*sorted((data / "corpus").glob("*.jsonl")), data / "labelled" / "spam.jsonl"]
    return [json.loads(line)["text"] for p in paths for line in p.open(encoding="utf-8")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import machine  # benchmarks/machine.py: what the figures were measured on
    import mlflow

    from lmforge.config import load_config
    from lmforge.data import pii
    from lmforge.data.validate import validate

    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{WORK / 'mlflow.db'}"
    mlflow.MlflowClient().search_experiments()
    data = ROOT / "data"
    texts = raw_texts(data)
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    validate(load_config(ROOT / "params.yaml", ["data.pii=keep"]), data, WORK / "warm")

    best: dict[str, float] = {}
    found: dict[str, dict] = {}
    for _ in range(args.repeats):
        for mode in MODES:
            setting = "keep" if mode == "none" else mode
            cfg = load_config(ROOT / "params.yaml", [f"data.pii={setting}"])
            out = WORK / mode
            shutil.rmtree(out, ignore_errors=True)
            find = pii.find
            if mode == "none":
                pii.find = lambda text, allow=None: []
            try:
                t = time.perf_counter()
                validate(cfg, data, out)
                best[mode] = min(best.get(mode, float("inf")), time.perf_counter() - t)
            finally:
                pii.find = find
            found[mode] = json.loads((out / "metrics.json").read_text())["pii"]["total"]
        t = time.perf_counter()
        n = sum(len(pii.find(text)) for text in texts)
        best["find"] = min(best.get("find", float("inf")), time.perf_counter() - t)

    record = machine.describe()
    result = {
        "machine_record": record,
        "loadavg_end": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        "repeats": args.repeats,
        "text_mb": round(mb, 2),
        "validate_none_s": round(best["none"], 2),
        "validate_none_mb_s": round(mb / best["none"], 2),
        "validate_keep_s": round(best["keep"], 2),
        "validate_mask_s": round(best["mask"], 2),
        "validate_keep_mb_s": round(mb / best["keep"], 2),
        "validate_mask_mb_s": round(mb / best["mask"], 2),
        "mask_over_keep": round(best["keep"] / best["mask"], 3),
        "mask_over_none": round(best["none"] / best["mask"], 3),
        "detectors_s": round(best["find"], 2),
        "detectors_mb_s": round(mb / best["find"], 2),
        "matches": n,
        "found": found["mask"],
    }
    print(json.dumps(result, indent=2))
    res = ROOT / "benchmarks" / "results" / "pii_throughput.json"
    res.write_text(json.dumps(result, indent=2) + "\n")
    r = result
    table = [
        "| text MB | validate, no detection | validate, pii: keep | validate, pii: mask | "
        "mask / keep | mask / no detection | detectors alone |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {r['text_mb']} | {r['validate_none_mb_s']} MB/s ({r['validate_none_s']} s) | "
        f"{r['validate_keep_mb_s']} MB/s ({r['validate_keep_s']} s) | "
        f"{r['validate_mask_mb_s']} MB/s ({r['validate_mask_s']} s) | {r['mask_over_keep']} | "
        f"{r['mask_over_none']} | {r['detectors_mb_s']} MB/s ({r['detectors_s']} s) |",
    ]
    doc = ROOT / "docs" / "benchmarks" / "pii.md"
    quality = doc.read_text().partition("<!-- pii_quality.py -->")  # pii_quality.py's part
    doc.write_text(
        f"# Personal-data masking: validate throughput\n\n{machine.line(record)}\n\n"
        "`benchmarks/pii_throughput.py` on the default `data/` (corpus and labelled set); raw "
        "numbers in `benchmarks/results/pii_throughput.json`. Fastest of "
        f"{r['repeats']} alternating runs per mode (load average at the end: "
        f"{r['loadavg_end']}). *No detection*: validate as before personal data was "
        "handled (`pii.find` patched to find nothing). `keep` still detects (the report counts "
        "what it leaves); "
        "`mask` also replaces and scans each masked text again for the expectation that "
        "nothing is left. *Detectors alone*: `pii.find` over the texts in memory.\n\n"
        + "\n".join(table)
        + "\n"
        + (f"\n{quality[1]}{quality[2]}" if quality[1] else "")
    )
    shutil.rmtree(WORK)


if __name__ == "__main__":
    main()
