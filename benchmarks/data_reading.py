"""The validate stage's reading + validation of a plain-text corpus against raw ``datasets``
reading of the same files, side by side (``data_throughput.py --reading``).

A synthetic corpus of English-like paragraphs (unique, ~0.8 KB each, separated by blank lines)
is written as 50 MB ``.txt`` files (``--mb`` in all; the issue asks about 1 GB). Each round
times, in fresh child processes one after the other, with the imports done before the clock:

- raw: ``datasets.load_dataset("text", sample_by="paragraph", streaming=True)`` over the files,
  every batch's texts touched (their characters counted): what reading costs at the least;
- raw arrow: the same without streaming (the Arrow cache written, then read back);
- validate: ``lmforge.data.validate.validate`` with ``data.text_documents: blank_line`` (the
  same ``datasets`` reader, then the record mapping, the split, personal-data masking, the
  profile, the chunked GX suites and the split files written), default ``data.pii: mask``
  and ``data.num_proc: 0`` (a worker process a core: ``lmforge.data.workers``);
- validate (1 process): the same with ``data.num_proc: 1``;
- validate (pii keep): the same without personal-data detection;
- validate (curation off): the same with every curation rule off (``CURATION_OFF``): what
  curation costs is the difference. The other validate contenders curate as params.yaml says,
  but for ``data.languages``, set to every language the model knows: the identification runs
  on every document and keeps this synthetic text, which is no language.

The rounds interleave the contenders so that load from other work on a shared machine falls on
each alike; the ratio is taken within a round. Peak RSS is each child's own (``ru_maxrss``),
with its RSS after the imports beside it (the libraries' share).

    .venv/bin/python benchmarks/data_throughput.py --reading [--mb 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work" / "data_reading"
FILE_MB = 50
CONTENDERS = (
    "raw",
    "raw_arrow",
    "validate",
    "validate_1_process",
    "validate_pii_keep",
    "validate_curation_off",
)
KINDS = {  # validate_<data.pii>_<data.num_proc>[_off: curation off]
    "raw": "raw",
    "raw_arrow": "raw_arrow",
    "validate": "validate_mask_0",
    "validate_1_process": "validate_mask_1",
    "validate_pii_keep": "validate_keep_0",
    "validate_curation_off": "validate_mask_0_off",
}
CURATION_OFF = [
    f"data.{key}=false"
    for key in (
        "curate_normalise",
        "curate_split_long",
        "curate_exact_dedup",
        "curate_near_dedup",
        "curate_quality",
        "curate_decontaminate",
    )
] + ["data.languages=[]"]
ANALYSIS = "## What the figures say"
SETS = [
    "data.corpus_glob=corpus/*.txt",
    "data.text_documents=blank_line",
    "data.max_file_mb=100",
]


def _words(rng: random.Random, n: int) -> list[str]:
    syllables = ["ka", "lo", "mi", "ne", "ra", "to", "su", "ve", "an", "el", "or", "th", "ing"]
    return ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(n)]


def synth_corpus(root: Path, mb: float) -> int:
    """``corpus/*.txt`` (paragraphs split by blank lines) and a small labelled set; bytes."""
    rng = random.Random(0)
    words = _words(rng, 3000)
    pool = [
        " ".join(rng.choices(words, k=rng.randint(6, 16))).capitalize() + "." for _ in range(20000)
    ]
    (root / "corpus").mkdir(parents=True)
    total, n_file = 0, 0
    while total < mb * 1e6:
        size, parts = 0, []
        while size < FILE_MB * 1e6 and total + size < mb * 1e6:
            para = " ".join(rng.choices(pool, k=8))
            parts.append(para)
            size += len(para) + 2
        body = "\n\n".join(parts) + "\n"
        (root / "corpus" / f"part{n_file:03d}.txt").write_text(body)
        total += len(body)
        n_file += 1
    labelled = root / "labelled" / "spam.jsonl"
    labelled.parent.mkdir()
    with labelled.open("w") as fh:
        for i in range(400):
            label = ("ham", "spam")[i % 2]
            text = " ".join(rng.choices(pool, k=4))
            fh.write(json.dumps({"id": f"l{i}", "text": text, "label": label}) + "\n")
    return total


def rss_mb(peak: bool) -> float:
    if peak:
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def child_raw(data: Path, streaming: bool = True) -> dict:
    import datasets
    import torch  # noqa: F401  (datasets' streaming imports it on first use: seconds)

    datasets.disable_progress_bars()
    after_import = rss_mb(peak=False)
    files = sorted(str(p) for p in (data / "corpus").glob("*.txt"))
    cache = WORK / "hf-cache"
    shutil.rmtree(cache, ignore_errors=True)
    t = time.perf_counter()
    ds = datasets.load_dataset(
        "text",
        data_files=files,
        sample_by="paragraph",
        split="train",
        streaming=streaming,
        cache_dir=str(cache),  # without streaming: the Arrow copy is written there, then read
    )
    n = chars = 0
    for batch in ds.iter(batch_size=1000):
        n += len(batch["text"])
        chars += sum(map(len, batch["text"]))
    seconds = time.perf_counter() - t
    shutil.rmtree(cache, ignore_errors=True)
    return {"s": seconds, "records": n, "rss_after_import_mb": after_import}


class WorkerRss(threading.Thread):
    """The largest RSS any worker process (a child) reached, sampled every 50 ms: a child's
    ``ru_maxrss`` would count the forks that run git, each the size of this process."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.done = 0.0, threading.Event()
        self.start()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.done.wait(0.05):
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # gone meanwhile
                    if "multiprocessing" in " ".join(child.cmdline()):  # not git, not a shell
                        self.peak = max(self.peak, child.memory_info().rss / 2**20)

    def stop(self) -> float:
        self.done.set()
        self.join()
        return self.peak


def child_validate(data: Path, pii: str, num_proc: str, off: str = "") -> dict:
    import datasets  # noqa: F401  (imports before the clock, as for raw)
    import great_expectations  # noqa: F401
    import mlflow
    import torch  # noqa: F401

    from lmforge.config import load_config
    from lmforge.data.validate import validate

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{WORK / 'mlflow.db'}"
    mlflow.MlflowClient().search_experiments()
    after_import = rss_mb(peak=False)
    from lmforge.data import langid

    every = f"data.languages=[{', '.join(repr(c) for c in langid.labels())}]"  # all kept
    sets = [*SETS, f"data.pii={pii}", f"data.num_proc={num_proc}"]
    sets += CURATION_OFF if off else [every]
    cfg = load_config(ROOT / "params.yaml", sets)
    out = WORK / f"validated-{pii}"
    shutil.rmtree(out, ignore_errors=True)
    sampler = WorkerRss()
    t = time.perf_counter()
    result = validate(cfg, data, out)
    seconds = time.perf_counter() - t
    workers = sampler.stop()
    shutil.rmtree(out, ignore_errors=True)
    return {
        "s": seconds,
        "records": result.records["corpus"],
        "rss_after_import_mb": after_import,
        "worker_peak_rss_mb": round(workers, 1),
    }


def in_child(kind: str, data: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(data)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"{kind} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=200.0, help="Corpus size, MB (the issue: 1000).")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args(argv)
    if args.child:
        kind, data = args.child[0], Path(args.child[1])
        if kind.startswith("raw"):
            out = child_raw(data, streaming=kind == "raw")
        else:
            out = child_validate(data, *kind.split("_")[1:])
        print(json.dumps({**out, "peak_rss_mb": rss_mb(peak=True)}))
        return
    shutil.rmtree(WORK, ignore_errors=True)
    data = WORK / "data"
    mb = synth_corpus(data, args.mb) / 1e6
    names = [c for c in CONTENDERS if c in args.contenders]
    rounds = []
    for r in range(args.rounds):
        row = {}
        for name in names if r % 2 == 0 else reversed(names):
            res = in_child(KINDS[name], data)
            row[name] = {**res, "mb_s": round(mb / res["s"], 2), "s": round(res["s"], 2)}
            print(r, name, json.dumps(row[name]), flush=True)
        for name in names:
            row[name]["ratio_to_raw"] = round(row["raw"]["s"] / row[name]["s"], 3)
            if "raw_arrow" in row:
                row[name]["ratio_to_raw_arrow"] = round(row["raw_arrow"]["s"] / row[name]["s"], 3)
        rounds.append(row)
    shutil.rmtree(WORK, ignore_errors=True)
    write(mb, names, rounds)


def write(mb: float, names: list[str], rounds: list[dict]) -> None:
    import machine  # benchmarks/machine.py

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    median = {
        name: {
            k: statistics.median(r[name][k] for r in rounds)
            for k in rounds[0][name]
            if isinstance(rounds[0][name][k], float | int)
        }
        for name in names
    }
    section = {
        "corpus_mb": round(mb, 1),
        "files": f"{FILE_MB} MB .txt files, paragraphs split by blank lines",
        "overrides": SETS,
        "target_ratio": 0.5,
        "machine_record": machine.describe(),
        "loadavg_end": load,
        "rounds": rounds,
        "median": median,
    }
    res = ROOT / "benchmarks" / "results" / "data_throughput.json"
    result = json.loads(res.read_text()) if res.is_file() else {}
    result.setdefault("reading", {})[f"{round(mb)}mb"] = section
    res.write_text(json.dumps(result, indent=2) + "\n")
    rows = []
    for sec in sorted(result["reading"].values(), key=lambda sec: sec["corpus_mb"]):
        for name, m in sec["median"].items():
            arrow = f"{m['ratio_to_raw_arrow']:.3f}" if "ratio_to_raw_arrow" in m else "-"
            workers = m.get("worker_peak_rss_mb") or 0
            rows.append(
                f"| {sec['corpus_mb']:,} | {name.replace('_', ' ')} | {m['s']:.1f} | "
                f"{m['mb_s']:.1f} | {m['ratio_to_raw']:.3f} | {arrow} | {m['peak_rss_mb']:,.0f} | "
                f"{f'{workers:,.0f}' if workers else '-'} | {m['rss_after_import_mb']:,.0f} | "
                f"{len(sec['rounds'])} | {sec['loadavg_end']} |"
            )
    md = ROOT / "docs" / "benchmarks" / "data_throughput.md"
    # What the figures say is written by hand under ANALYSIS; a new run keeps it.
    old = md.read_text() if md.is_file() else ""
    kept = old[old.index(ANALYSIS) :] if ANALYSIS in old else ""
    md.write_text(
        "# Reading and validating a plain-text corpus\n\n"
        f"{machine.line(section['machine_record'])} The load average at the end of each run "
        "is in the table (other work on the machine shows there).\n\n"
        "`benchmarks/data_throughput.py --reading` (`benchmarks/data_reading.py`); raw numbers "
        "in `benchmarks/results/data_throughput.json` (`reading`). The corpus is synthetic "
        f"English-like paragraphs in {FILE_MB} MB `.txt` files, documents split on blank lines. "
        "*raw*: `datasets` streaming `load_dataset('text', sample_by='paragraph')`, every text "
        "touched; *raw arrow*: the same without streaming (the Arrow copy written to a cache "
        "folder, then every text read from it: what `load_dataset` costs before a `.map`); "
        "*validate*: the whole validate stage on the same files (reading through the "
        "same `datasets` call, record mapping, split, personal-data masking, profile, chunked "
        "GX suites, split files written), with `data.num_proc: 0` (a worker process a core); "
        "*validate 1 process*: the same in one process (`data.num_proc: 1`); *validate pii "
        "keep*: without personal-data detection; *validate curation off*: every curation rule "
        "off (the other validate rows curate as params.yaml says, every language kept: "
        "normalising, splitting, exact and near-duplicate removal, the quality rules, language "
        "identification, decontamination). Medians over interleaved rounds; the ratio is "
        "raw seconds / contender seconds within a round (target >= 0.5). Peak RSS is each "
        "child's own, *worker peak RSS* the largest of its worker processes; *after imports* "
        "is its RSS before reading started (the libraries).\n\n"
        "| corpus MB | contender | s | MB/s | ratio to raw | ratio to raw arrow | peak RSS MB | "
        "worker peak RSS MB | RSS after imports MB | rounds | load avg at end |\n"
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
        + "\n".join(rows)
        + "\n"
        + (f"\n{kept}" if kept else "")
    )
    print(f"wrote {res.relative_to(ROOT)} and {md.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
