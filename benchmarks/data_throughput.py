"""Data stages' steady-state throughput against raw ``tokenizers`` ``encode_batch``, one run.

For each corpus scale (1x: the default ``data/``; 10x: it replicated with fresh ids) a child
process imports the stage modules and their libraries (start-up, reported apart), then times
validate, augment and tokenize; a second child times the trained tokenizer's ``encode_batch``
(all threads) over the same corpus texts: the limit a tokenize stage could reach. Each child's
peak RSS (and that of its workers) is recorded: memory must stay flat as the corpus grows.

Throughput is MB of corpus text (UTF-8) per second. The pipeline also validates, augments and
(``tokenizer.include_labelled_text``) tokenizes the labelled set, which the raw tokenizer never
sees: the ratio is conservative.

    .venv/bin/python benchmarks/data_throughput.py [--scales 1 10]

Results: benchmarks/results/data_throughput.json and docs/benchmarks/data.md. With ``--reading``
it measures the validate stage's reading and validation of a large plain-text corpus against raw
``datasets`` reading instead (``benchmarks/data_reading.py``; its section ``reading`` of the same
JSON and docs/benchmarks/data_throughput.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work" / "data_throughput"
# Replicated records repeat their texts: the duplicate-share bound would (rightly) refuse them.
# The corpus replicates the shipped texts, so the duplicate rules must let copies through:
# curation's exact and near-duplicate removal would keep one copy of each and measure a
# different corpus. Curation's cost is measured by --reading (data_reading.py: its unique
# synthetic paragraphs, curation on against off; docs/benchmarks/data_throughput.md).
OVERRIDES = [
    "data.max_duplicate_share=1.0",
    "data.curate_exact_dedup=false",
    "data.curate_near_dedup=false",
]


def replicate(src: Path, dst: Path, times: int) -> int:
    """Write ``times`` copies of every raw file, ids suffixed so they stay unique."""
    if dst.exists():
        shutil.rmtree(dst)
    text_bytes = 0
    for path in sorted(src.rglob("*.jsonl")):
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        lines = path.read_text(encoding="utf-8").splitlines()
        with out.open("w", encoding="utf-8") as fh:
            for k in range(times):
                for line in lines:
                    rec = json.loads(line)
                    if k:
                        rec["id"] = f"{rec['id']}~{k}"
                    if "corpus" in out.parts:
                        text_bytes += len(rec["text"].encode("utf-8"))
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return text_bytes


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)  # Linux: KiB


def child_pipeline(data: Path, out: Path) -> dict:
    t0 = time.perf_counter()
    import datasets  # noqa: F401  (imported here so that start-up is measured apart)
    import great_expectations  # noqa: F401

    # The stages log to MLflow as under `dvc repro`; a throwaway store, created before timing.
    import mlflow
    import tokenizers  # noqa: F401
    import transformers  # noqa: F401

    from lmforge.config import load_config
    from lmforge.data.augment import augment
    from lmforge.data.tokenize import tokenize
    from lmforge.data.validate import validate

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{out.parent / 'mlflow.db'}"
    mlflow.MlflowClient().search_experiments()
    startup = time.perf_counter() - t0
    cfg = load_config(ROOT / "params.yaml", OVERRIDES)
    times = {}
    for name, fn, args in (
        ("validate", validate, (data, out / "validated")),
        ("augment", augment, (out / "validated", out / "augmented")),
        ("tokenize", tokenize, (out / "augmented", out / "tokenized")),
    ):
        t = time.perf_counter()
        fn(cfg, *args)
        times[name] = time.perf_counter() - t
    return {"startup_s": startup, "stages_s": times, "peak_rss_mb": peak_rss_mb()}


def child_raw(data: Path, tok_dir: Path) -> dict:
    t0 = time.perf_counter()
    from tokenizers import Tokenizer

    startup = time.perf_counter() - t0
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    texts = [
        json.loads(line)["text"]
        for path in sorted((data / "corpus").glob("*.jsonl"))
        for line in path.open(encoding="utf-8")
    ]
    tok.encode_batch(texts[:200])  # warm the thread pool
    t = time.perf_counter()
    n_tokens = 0
    for i in range(0, len(texts), 1000):
        n_tokens += sum(len(e.ids) for e in tok.encode_batch(texts[i : i + 1000]))
    return {
        "startup_s": startup,
        "encode_s": time.perf_counter() - t,
        "tokens": n_tokens,
        "peak_rss_mb": peak_rss_mb(),
    }


def in_child(kind: str, *args: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"{kind} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--child", nargs="+")
    ap.add_argument(
        "--reading",
        action="store_true",
        help="Instead: validate's reading + validation of a synthetic plain-text corpus against "
        "raw datasets reading of the same files (data_reading.py; its own options follow).",
    )
    args, rest = ap.parse_known_args()
    if args.reading:
        import data_reading  # benchmarks/data_reading.py

        data_reading.main(rest)
        return
    if args.child:
        kind, *paths = args.child
        fn = child_pipeline if kind == "pipeline" else child_raw
        print(json.dumps(fn(*map(Path, paths))))
        return

    rows = []
    for scale in args.scales:
        data, out = WORK / f"x{scale}" / "data", WORK / f"x{scale}" / "out"
        mb = replicate(ROOT / "data", data, scale) / 1e6
        pipe = in_child("pipeline", data, out)
        raw = in_child("raw", data, out / "tokenized" / "tokenizer")
        stages_total = sum(pipe["stages_s"].values())
        row = {
            "scale": scale,
            "corpus_mb": round(mb, 2),
            "startup_s": round(pipe["startup_s"], 2),
            **{f"{k}_s": round(v, 2) for k, v in pipe["stages_s"].items()},
            **{f"{k}_mb_s": round(mb / v, 2) for k, v in pipe["stages_s"].items()},
            "pipeline_mb_s": round(mb / stages_total, 2),
            "raw_encode_s": round(raw["encode_s"], 2),
            "raw_encode_mb_s": round(mb / raw["encode_s"], 2),
            "ratio_pipeline_to_raw": round(raw["encode_s"] / stages_total, 3),
            "pipeline_peak_rss_mb": pipe["peak_rss_mb"],
            "raw_peak_rss_mb": raw["peak_rss_mb"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(WORK / f"x{scale}")

    import machine  # benchmarks/machine.py: what the figures were measured on

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "machine_record": machine.describe(),
        "loadavg_end": load,
        "overrides": OVERRIDES,
        "target_ratio": 0.5,
        "rows": rows,
    }
    res = ROOT / "benchmarks" / "results" / "data_throughput.json"
    res.parent.mkdir(parents=True, exist_ok=True)
    if res.is_file() and "reading" in (before := json.loads(res.read_text())):
        result["reading"] = before["reading"]  # the --reading run's section (data_reading.py)
    res.write_text(json.dumps(result, indent=2) + "\n")
    head = (
        "| scale | corpus MB | start-up s | validate MB/s | augment MB/s | tokenize MB/s | "
        "pipeline MB/s | raw encode_batch MB/s | pipeline / raw | peak RSS MB (pipeline) |"
    )
    table = [head, "| ---: " * 10 + "|"]
    table += [
        f"| {r['scale']}x | {r['corpus_mb']} | {r['startup_s']} | {r['validate_mb_s']} | "
        f"{r['augment_mb_s']} | {r['tokenize_mb_s']} | {r['pipeline_mb_s']} | "
        f"{r['raw_encode_mb_s']} | {r['ratio_pipeline_to_raw']} | {r['pipeline_peak_rss_mb']} |"
        for r in rows
    ]
    md = ROOT / "docs" / "benchmarks" / "data.md"
    md.write_text(
        f"# Data stages throughput\n\n{machine.line(result['machine_record'])}\n\n"
        "`benchmarks/data_throughput.py`, one run on "
        f"{result['machine']}; raw numbers in `benchmarks/results/data_throughput.json`. MB are "
        "megabytes of corpus text; *pipeline* is validate + augment + tokenize (steady state, "
        "imports reported as start-up), *raw* is the trained tokenizer's `encode_batch` on the "
        "same texts with all threads: the limit. Target: pipeline / raw >= 0.5. The 10x corpus "
        "is the default replicated with new ids (`data.max_duplicate_share=1.0`, since its texts "
        "repeat).\n\n" + "\n".join(table) + "\n\n"
        f"Load average at the end of the run: {load}. The stages and the raw encode run one "
        "after the other, so other work on a shared machine moves the ratio; peak RSS includes "
        "the libraries (GX, pandas, transformers, datasets: about 0.8 GB at start-up).\n"
    )
    print(f"wrote {res.relative_to(ROOT)} and {md.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
