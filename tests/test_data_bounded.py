"""Validation in bounded memory: checked a chunk of rows at a time, the cross-record expectations
on compact columns of every record, with the same results as one table."""

from __future__ import annotations

import json

import pytest
from data_fixtures import MICRO, corpus_records, write_jsonl

from lmforge.config import load_config
from lmforge.data import expectations
from lmforge.data.expectations import Profile
from lmforge.data.validate import validate
from lmforge.errors import DataError

pytestmark = pytest.mark.usefixtures("data_store")  # MLflow runs go to a throwaway store
CURATION_OFF = [
    "data.curate_normalise=false",
    "data.curate_exact_dedup=false",
    "data.curate_near_dedup=false",
]


def test_profile_keeps_one_chunk_of_rows(micro_cfg, monkeypatch):
    monkeypatch.setattr(expectations, "CHUNK_ROWS", 10)
    prof = Profile("corpus", bounds=micro_cfg.data)
    for rec in corpus_records("tales", 25):
        prof.add(rec)
        assert len(prof.cols["id"]) < 10  # full chunks are checked and dropped
    assert len(prof) == 25 and len(prof.table["id"]) == 2
    assert prof.checked and all(item["success"] for item in prof.checked)
    assert [r["id"] for r in corpus_records("tales", 25)] == [
        *prof.table_frame()["id"],
        *prof.cols["id"],
    ]


def _report(cfg, raw, out):
    try:
        validate(cfg, raw, out)
        report = json.loads((out / "report.json").read_text())
    except DataError as err:
        return str(err)
    return {
        name: [
            (e["expectation"], e["success"], e["unexpected_count"], e["observed"])
            for e in ds["expectations"]
        ]
        for name, ds in report["datasets"].items()
    }


def _faults(raw):
    path = raw / "corpus" / "tales.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    recs[9]["id"] = recs[4]["id"]  # a repeated id, in another chunk
    recs[20]["text"] = None
    recs[33]["text"] = "ok\x07" + recs[33]["text"]
    recs[41]["text"] = recs[2]["text"]
    write_jsonl(path, recs)
    labelled = raw / "labelled" / "spam.jsonl"
    recs = [json.loads(line) for line in labelled.read_text().splitlines()]
    recs[17]["label"] = "eggs"
    write_jsonl(labelled, recs)


@pytest.mark.parametrize("faulty", [False, True], ids=["valid", "faulty"])
def test_chunked_results_equal_one_table(faulty, micro_cfg, raw_data, tmp_path, monkeypatch):
    if faulty:  # faults that curation would mend (a copy, a control character) refused
        _faults(raw_data)
        micro_cfg = load_config(None, [*MICRO, *CURATION_OFF])
    whole = _report(micro_cfg, raw_data, tmp_path / "whole")
    monkeypatch.setattr(expectations, "CHUNK_ROWS", 7)  # 90 corpus, 80 labelled records
    chunked = _report(micro_cfg, raw_data, tmp_path / "chunked")
    if not faulty:
        assert isinstance(whole, dict) and chunked == whole
        return
    assert isinstance(whole, str) and isinstance(chunked, str)
    for failed in (
        "expect_column_values_to_be_unique(id) failed for 2 of 90 records",
        "expect_column_values_to_not_be_null(text) failed for 1 of 90 records",
        "(control_chars, max_value=0.0) failed for 1 of 90 records (1.12%)",
        "expect_column_values_to_be_in_set(label",
        "e.g. mail/ham/0017",
    ):
        assert failed in whole and failed in chunked, (whole, chunked)


def test_gx_is_used_through_its_public_api_only(monkeypatch):
    """Making lmforge's GX context leaves GX's module constants as GX ships them: a run-time
    patch of its internals (the dataframe fingerprint threshold, once) would change GX for
    everything else in the process, and break silently when GX renames it."""
    from great_expectations.execution_engine import pandas_execution_engine

    monkeypatch.setattr(pandas_execution_engine, "HASH_THRESHOLD", 12345)  # a marker
    monkeypatch.setattr(expectations, "_CONTEXT", None)  # made afresh, as in a new process
    expectations._gx()
    assert pandas_execution_engine.HASH_THRESHOLD == 12345
