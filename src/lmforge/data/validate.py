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
    cfg: DataConfig, kind: Kind, paths: list[Path], out: Path, pii: Tally
) -> tuple[Profile, dict[str, int]]:
    """Stream ``paths`` into ``out/{split}.jsonl`` (personal data handled by ``pii``); return
    the profile and records per split."""
    checked = pii.allow if pii.mode != "keep" else None
    labels = list(cfg.labels) if kind == "labelled" else []
    prof = Profile(kind, labels=labels, pii=checked, bounds=cfg)  # checked a chunk at a time
    counts = dict.fromkeys(SPLITS, 0)
    shares = (cfg.split_salt, cfg.validation_share, cfg.test_share)
    text = [p for p in paths if sources.detect(p, kind, cfg) == "text"]
    text_bytes = sum(p.stat().st_size for p in text)
    workers = worker_count(cfg.num_proc)
    pool = BatchPool(workers, kind, shares, pii, checked, out / ".parts", text_bytes)
    with JsonlWriters(out, SPLITS) as writers, pool:
        for rec in sources.read(paths, kind, cfg):
            if isinstance(rec, TextFiles):  # plain text, by columns: the same as the loop below
                _applied(pool.validate(rec), prof, writers, counts)
                continue
            # the batches read before this record are written before it
            _applied(pool.drain(), prof, writers, counts)
            # Masked first: a derived id is the hash of the masked text (as_written).
            matches = pii.scan(rec["text"])
            rec = as_written(rec, pii.masked(rec["text"], matches))
            split = split_of(rec["id"], cfg.split_salt, cfg.validation_share, cfg.test_share)
            if pii.count(kind, split, matches):
                continue  # dropped
            # What is written is scanned again when it was masked; a text without a match
            # is written as it was just scanned.
            left = None if matches else 0
            writers.write(split, rec)
            counts[split] += 1
            prof.add(rec, pii_left=left)  # ignored under keep: no pii column
        _applied(pool.drain(), prof, writers, counts)
    return prof, counts


def _applied(
    batches: Iterator[Done], prof: Profile, writers: JsonlWriters, counts: dict[str, int]
) -> None:
    for done in batches:
        for split, n in apply(done, prof, writers).items():
            counts[split] += n


def metrics_of(report: dict[str, Any], counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    out: dict[str, Any] = {"success": report["success"], "pii": report["pii"]}
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
            for kind, paths in files.items():
                profiles[kind], counts[kind] = split_and_profile(
                    cfg.data, kind, paths, tmp / kind, pii
                )
            # The classes (listed or the training split's) before the suites check their shares.
            task = resolve(cfg.data, profiles["labelled"])
            profiles["labelled"].labels = task["labels"]
            report = run_suites(cfg.data, profiles, stage="validate")
            report["labels"] = task
            report["pii"] = pii.summary(files, SPLITS)
            report["files"] = {k: [str(p) for p in v] for k, v in files.items()}
            report["splits"] = counts
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
