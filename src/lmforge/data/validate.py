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

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.config import Config, DataConfig
from lmforge.data import filters, sources
from lmforge.data.columnar import Done, apply
from lmforge.data.curate import (
    Deduper,
    Rules,
    Stats,
    prepare_records,
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
    contaminants: np.ndarray | None = None,
) -> tuple[Profile, dict[str, int]]:
    """Stream ``paths`` into ``out/{split}.jsonl`` (curated, ``lmforge.data.curate``, into
    ``stats``, less what shares an n-gram with ``contaminants``; personal data handled by
    ``pii``); return the profile and records per split."""
    checked = pii.allow if pii.mode != "keep" else None
    labels = list(cfg.labels) if kind == "labelled" else []
    prof = Profile(kind, labels=labels, pii=checked, bounds=cfg)  # checked a chunk at a time
    counts = dict.fromkeys(SPLITS, 0)
    shares = (cfg.split_salt, cfg.validation_share, cfg.test_share)
    text = [p for p in paths if sources.detect(p, kind, cfg) == "text"]
    text_bytes = sum(p.stat().st_size for p in text)
    workers = worker_count(cfg.num_proc)
    rules = Rules.of(cfg, kind, contaminants)
    stats = Stats(cfg.curate_examples) if stats is None else stats
    dedup = Deduper(rules, shares, stats) if rules else None
    pool = BatchPool(workers, kind, shares, pii, checked, out / ".parts", text_bytes, rules)
    with JsonlWriters(out, SPLITS) as writers, pool:
        for item in _grouped(sources.read(paths, kind, cfg), rules, stats):
            if isinstance(item, TextFiles):  # plain text, by columns: the same as the loop below
                _applied(pool.validate(item), prof, writers, counts, dedup)
                continue
            # the batches read before these records are written before them
            _applied(pool.drain(), prof, writers, counts, dedup)
            for rec, file, line in item:
                # Masked first: a derived id is the hash of the masked text (as_written).
                matches = pii.scan(rec["text"])
                text = rec["text"] if isinstance(rec["text"], str) else None  # null: refused
                sig = signature(text, rules) if text and rules and rules.near else None
                rec = as_written(rec, pii.masked(rec["text"], matches))
                split = split_of(rec["id"], cfg.split_salt, cfg.validation_share, cfg.test_share)
                if pii.count(kind, split, matches):
                    continue  # dropped
                where = (file, line)
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


RECORDS_AT_ONCE = 512  # records curated together (the rules run a batch at a time)


def _grouped(
    items: Iterator[sources.Located | TextFiles], rules: Rules | None, stats: Stats
) -> Iterator[TextFiles | list[tuple[dict[str, Any], str, int]]]:
    """The plain-text units as they come, and the records between them in lists of at most
    ``RECORDS_AT_ONCE``, curated (``curate.prepare_records``): each piece kept with its file and
    line, in input order."""
    group: list[sources.Located] = []

    def done() -> list[tuple[dict[str, Any], str, int]]:
        if rules is None:
            return [(i.rec, i.file, i.line) for i in group]
        return prepare_records(group, rules, stats)

    for item in items:
        if isinstance(item, TextFiles):
            if group:
                yield done()
                group = []
            yield item
            continue
        group.append(item)
        if len(group) == RECORDS_AT_ONCE:
            yield done()
            group = []
    if group:
        yield done()


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


def evaluation_ngrams(cfg: Config, labelled: Path) -> np.ndarray | None:
    """The n-grams of what the tasks are evaluated on (``filters``): the labelled validation
    and test texts as written, and ``finetune.sft_data``'s validation and test pairs where it is
    set (the default pairs are made of the labelled texts)."""
    if not cfg.data.curate_decontaminate:
        return None
    texts = [
        json.loads(line)["text"]
        for split in ("validation", "test")
        for line in (labelled / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    if cfg.finetune.sft_data:
        from lmforge.data.sft_pairs import load_pairs

        pairs = load_pairs(cfg, labelled.parent)
        texts += [
            t for s in ("validation", "test") for p in pairs[s] for t in (p.prompt, p.response)
        ]
    return filters.evaluation_ngrams(texts, cfg.data.decontaminate_ngram)


def check_languages(cfg: DataConfig) -> None:
    """``data.languages`` against the model's languages (``lmforge.data.langid``)."""
    if not cfg.languages:
        return
    from lmforge.data import langid

    unknown = sorted(set(cfg.languages) - set(langid.labels()))
    if unknown:
        raise DataError(
            f"data.languages: {', '.join(unknown)} not among the languages the identification "
            f"model knows ({', '.join(sorted(langid.labels()))}); fix data.languages in "
            "params.yaml (or leave it empty to keep every language)."
        )


def metrics_of(report: dict[str, Any], counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    out: dict[str, Any] = {"success": report["success"], "pii": report["pii"]}
    if "curation" in report:  # the counts; the examples are in report.json
        skip = ("examples", "by_source", "by_file")  # per file: in report.json, not as metrics
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
    check_languages(cfg.data)
    with tracked(cfg, "validate", sections=("data",), inputs={"raw-data": Path(data_dir)}):
        with atomic_output_dir(out_dir) as tmp:
            profiles, counts = {}, {}
            pii = Tally(cfg.data.pii, Allow(cfg.data.pii_allow))
            stats = Stats(cfg.data.curate_examples)
            # The labelled set first: its evaluation texts are what the corpus is cleaned of.
            profiles["labelled"], counts["labelled"] = split_and_profile(
                cfg.data, "labelled", files["labelled"], tmp / "labelled", pii, stats
            )
            evaluation = evaluation_ngrams(cfg, tmp / "labelled")
            profiles["corpus"], counts["corpus"] = split_and_profile(
                cfg.data, "corpus", files["corpus"], tmp / "corpus", pii, stats, evaluation
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
