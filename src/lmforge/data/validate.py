"""The ``validate`` stage: check the raw data, mask personal data, then split it by a hash of
the record id.

Every input is read once, streaming, in its own format (``lmforge.data.sources``: JSON lines,
plain text, JSON, Parquet, CSV, ``save_to_disk`` folders): the read-time checks run on each
record (plain text a batch of documents at a time, by columns: ``lmforge.data.columnar``);
personal data is masked (or the record dropped, per ``data.pii``: ``lmforge.data.pii``) before
the record goes to its split's file in a temporary folder and leaves one row of profile (with
the matches left in what was written); the Great Expectations suites then run on the profiles.
Only if every expectation passes does the temporary folder become ``out_dir`` (report, metrics
and the split files together).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import Config, DataConfig
from lmforge.data import sources
from lmforge.data.columnar import Done, apply
from lmforge.data.curate import (
    Deduper,
    Rules,
    Stats,
    piece_id,
    prepare_text,
    signature,
    text_hash,
)
from lmforge.data.expectations import Profile, failure_message, run_suites
from lmforge.data.labels import LABELS_FILE, resolve
from lmforge.data.pii import Allow, Tally
from lmforge.data.records import JsonlWriters, Kind, as_written
from lmforge.data.report_html import render
from lmforge.data.sources import TextFiles, check_input
from lmforge.data.split import SPLITS, split_of
from lmforge.data.track import log_outputs, tracked
from lmforge.data.workers import BatchPool, worker_count
from lmforge.errors import DataError
from lmforge.outputs import atomic_output_dir, write_json


@dataclass
class ValidationResult:
    success: bool
    records: dict[str, dict[str, int]]  # dataset -> split -> records
    expectations_evaluated: int
    expectations_failed: int
    out_dir: str
    pii: dict[str, int]  # type -> matches found (masked, dropped or kept per data.pii), dropped


def raw_files(cfg: DataConfig, data_dir: Path) -> dict[str, list[Path]]:
    """The corpus inputs (``data.corpus_glob``: files, or ``save_to_disk`` folders) and the
    labelled file, each checked up front in the format it will be read as."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder not found; run `dvc pull` (or `make data`).")
    corpus = sorted(data_dir.glob(cfg.corpus_glob))
    if not corpus:
        raise DataError(
            f"{data_dir}: no file matches data.corpus_glob={cfg.corpus_glob!r}; run `dvc pull` "
            "or fix the glob in params.yaml (e.g. corpus/*.txt, corpus/*.parquet, or the folder "
            "of a saved dataset)."
        )
    files = {"corpus": corpus, "labelled": [data_dir / cfg.labelled_file]}
    for kind, paths in files.items():
        for path in paths:
            check_input(path, kind, cfg)
    return files


def split_and_profile(
    cfg: DataConfig,
    kind: Kind,
    paths: list[Path],
    out: Path,
    pii: Tally,
    stats: Stats | None = None,
) -> tuple[Profile, dict[str, int]]:
    """Stream ``paths`` into ``out/{split}.jsonl`` (curated, ``lmforge.data.curate``, into
    ``stats``; personal data handled by ``pii``); return the profile and records per split."""
    checked = pii.allow if pii.mode != "keep" else None
    labels = list(cfg.labels) if kind == "labelled" else []
    prof = Profile(kind, labels=labels, pii=checked, bounds=cfg)  # checked a chunk at a time
    counts = dict.fromkeys(SPLITS, 0)
    shares = (cfg.split_salt, cfg.validation_share, cfg.test_share)
    text = [p for p in paths if sources.detect(p, kind, cfg) == "text"]
    text_bytes = sum(p.stat().st_size for p in text)
    workers = worker_count(cfg.num_proc)
    rules = Rules.of(cfg, kind)
    stats = Stats(cfg.curate_examples) if stats is None else stats
    dedup = Deduper(rules, shares, stats) if rules else None
    pool = BatchPool(workers, kind, shares, pii, checked, out / ".parts", text_bytes, rules)
    with JsonlWriters(out, SPLITS) as writers, pool:
        for item in sources.read(paths, kind, cfg):
            if isinstance(item, TextFiles):  # plain text, by columns: the same as the loop below
                _applied(pool.validate(item), prof, writers, counts, dedup)
                continue
            # the batches read before this record are written before it
            _applied(pool.drain(), prof, writers, counts, dedup)
            for rec, line in _curated(item, rules, stats):
                # Masked first: a derived id is the hash of the masked text (as_written).
                matches = pii.scan(rec["text"])
                text = rec["text"] if isinstance(rec["text"], str) else None  # null: refused
                sig = signature(text, rules) if text and rules and rules.near else None
                rec = as_written(rec, pii.masked(rec["text"], matches))
                split = split_of(rec["id"], cfg.split_salt, cfg.validation_share, cfg.test_share)
                if pii.count(kind, split, matches):
                    continue  # dropped
                where = (item.file, line)
                if (
                    text
                    and dedup
                    and not dedup.keep(_hash(rec), sig, rec["id"], rec["source"], *where)
                ):
                    continue
                # What is written is scanned again when it was masked; a text without a match
                # is written as it was just scanned.
                left = None if matches else 0
                writers.write(split, rec)
                counts[split] += 1
                prof.add(rec, pii_left=left, where=where)  # ignored under keep: no pii column
        _applied(pool.drain(), prof, writers, counts, dedup)
    return prof, counts


def _curated(
    item: sources.Located, rules: Rules | None, stats: Stats
) -> Iterator[tuple[dict[str, Any], int]]:
    """A record normalised and split (``curate.prepare_text``): its pieces, each with its line."""
    rec = item.rec
    if rules is None or not isinstance(rec["text"], str):  # a null text: the checks say so
        yield rec, item.line
        return
    source = rec.get("source") or ""
    parts = prepare_text(rec["text"], rules, stats, source, item.file, item.line)
    for k, (line, text) in enumerate(parts, 1):
        yield {**rec, "id": piece_id(rec["id"], k, len(parts)), "text": text}, line


def _hash(rec: dict[str, Any]) -> int:
    return text_hash(rec["text"])


def _applied(
    batches: Iterator[Done],
    prof: Profile,
    writers: JsonlWriters,
    counts: dict[str, int],
    dedup: Deduper | None,
) -> None:
    for done in batches:
        if dedup is not None:
            done = dedup.apply(done)
        for split, n in apply(done, prof, writers).items():
            counts[split] += n


def metrics_of(report: dict[str, Any], counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    out: dict[str, Any] = {"success": report["success"], "pii": report["pii"]}
    if "curation" in report:  # the counts; the examples are in report.json
        skip = ("examples", "by_source")  # by file stem: in report.json, not as metrics
        out["curation"] = {k: v for k, v in report["curation"].items() if k not in skip}
    for name, ds in report["datasets"].items():
        out[name] = {
            "records": ds["records"],
            "chars": ds["chars"],
            "expectations": ds["evaluated"],
            "failed": ds["failed"],
            **{f"{split}_records": n for split, n in counts[name].items()},
        }
    return out


def validate(cfg: Config, data_dir: Path, out_dir: Path) -> ValidationResult:
    """Check ``data_dir`` with the GX suites; write the splits and reports to ``out_dir``."""
    files = raw_files(cfg.data, data_dir)  # missing, empty, binary: refused before anything starts
    with tracked(cfg, "validate", sections=("data",)):
        with atomic_output_dir(out_dir) as tmp:
            profiles, counts = {}, {}
            pii = Tally(cfg.data.pii, Allow(cfg.data.pii_allow))
            stats = Stats(cfg.data.curate_examples)
            for kind, paths in files.items():
                profiles[kind], counts[kind] = split_and_profile(
                    cfg.data, kind, paths, tmp / kind, pii, stats
                )
            # The classes (listed or the training split's) before the suites check their shares.
            task = resolve(cfg.data, profiles["labelled"])
            profiles["labelled"].labels = task["labels"]
            report = run_suites(cfg.data, profiles, stage="validate")
            report["labels"] = task
            report["pii"] = pii.summary(files, SPLITS)
            report["files"] = {k: [str(p) for p in v] for k, v in files.items()}
            report["splits"] = counts
            corpus = report["datasets"]["corpus"]
            report["curation"] = stats.summary(corpus["records"], corpus["chars"])
            if not report["success"]:
                raise DataError(failure_message(report, str(data_dir)))
            write_json(tmp / "report.json", report)
            write_json(tmp / "labelled" / LABELS_FILE, task)
            (tmp / "report.html").write_text(render(report, f"Validation of {data_dir}"))
            write_json(tmp / "metrics.json", metrics_of(report, counts))
        log_outputs(
            metrics_of(report, counts),
            [Path(out_dir) / "report.html", Path(out_dir) / "report.json"],
        )
    return ValidationResult(
        success=True,
        records=counts,
        expectations_evaluated=sum(d["evaluated"] for d in report["datasets"].values()),
        expectations_failed=0,
        out_dir=str(out_dir),
        pii=report["pii"]["total"],
    )
