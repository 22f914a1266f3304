"""Bad raw data: each case stops with one paragraph naming the file and the problem, exits
non-zero, and writes nothing downstream (the previous output, if any, stays as it was)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from data_fixtures import write_jsonl

from lmforge.config import load_config
from lmforge.data.validate import validate
from lmforge.errors import DataError

pytestmark = pytest.mark.usefixtures("data_store")  # MLflow runs go to a throwaway store

LMFORGE = str(Path(sys.executable).parent / "lmforge")


def corpus_file(raw: Path) -> Path:
    return raw / "corpus" / "tales.jsonl"


def spam_file(raw: Path) -> Path:
    return raw / "labelled" / "spam.jsonl"


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def empty_file(raw: Path) -> tuple[Path, str]:
    corpus_file(raw).write_bytes(b"")
    return corpus_file(raw), "empty file"


def blank_lines(raw: Path) -> tuple[Path, str]:
    corpus_file(raw).write_text("\n  \n\n")
    return corpus_file(raw), "no records (only blank lines)"


def binary_file(raw: Path) -> tuple[Path, str]:
    path = raw / "corpus" / "model.jsonl"
    path.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)
    return path, "binary file"


def invalid_utf8(raw: Path) -> tuple[Path, str]:
    path = corpus_file(raw)
    data = path.read_bytes().split(b"\n")
    data[3] = data[3].replace(b"king", b"k\xe9ng", 1).replace(b"the", b"th\xe9", 1)
    path.write_bytes(b"\n".join(data))
    return path, "line 4: invalid UTF-8"


def huge_line(raw: Path) -> tuple[Path, str]:
    path = raw / "corpus" / "huge.jsonl"
    with path.open("w") as fh:  # one 50 MB record, well under data.max_file_mb (100)
        fh.write('{"id": "huge", "source": "x", "text": "' + "a" * 50_000_000 + '"}\n')
    return path, "line 1 is longer than data.max_line_mb"


def wrong_schema(raw: Path) -> tuple[Path, str]:
    path = corpus_file(raw)
    recs = lines(path)
    recs[2] = {"doc_id": recs[2]["id"], "body": recs[2]["text"]}
    write_jsonl(path, recs)
    return path, "line 3: missing field 'id'"


def wrong_type(raw: Path) -> tuple[Path, str]:
    path = corpus_file(raw)
    recs = lines(path)
    recs[5]["text"] = ["a", "list"]
    write_jsonl(path, recs)
    return path, "line 6: field 'text' is list"


def not_json(raw: Path) -> tuple[Path, str]:
    path = spam_file(raw)
    path.write_text(path.read_text() + "{'id': 'single quotes'}\n")
    return path, "not valid JSON"


def missing_label(raw: Path) -> tuple[Path, str]:
    path = spam_file(raw)
    recs = lines(path)
    del recs[7]["label"]
    write_jsonl(path, recs)
    return path, "line 8: missing field 'label'"


def deeply_nested(raw: Path) -> tuple[Path, str]:
    path = corpus_file(raw)
    path.write_text(path.read_text() + "[" * 100_000 + "]" * 100_000 + "\n")
    return path, "JSON nested too deeply to read"


def duplicate_ids(raw: Path) -> tuple[Path, str]:
    path = corpus_file(raw)
    recs = lines(path)
    recs[9]["id"] = recs[4]["id"]
    write_jsonl(path, recs)
    return raw, "expect_column_values_to_be_unique(id) failed for 2 of 90 records"


CASES = [
    *(empty_file, blank_lines, binary_file, invalid_utf8, huge_line, wrong_schema, wrong_type),
    *(not_json, deeply_nested, missing_label, duplicate_ids),
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_is_refused_and_nothing_is_written(case, raw_data, tmp_path):
    cfg = load_config(None)  # the shipped bounds: a 50 MB line passes the file-size check
    named, problem = case(raw_data)
    out = tmp_path / "validated"
    with pytest.raises(DataError) as err:
        validate(cfg, raw_data, out)
    message = str(err.value)
    assert message.startswith(str(named)), message[:200]
    assert problem in message
    assert "\n" not in message  # one paragraph
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary folder left behind


def test_failed_run_leaves_the_previous_output_untouched(micro_cfg, raw_data, tmp_path):
    out = tmp_path / "validated"
    validate(micro_cfg, raw_data, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    missing_label(raw_data)
    with pytest.raises(DataError):
        validate(micro_cfg, raw_data, out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_cli_prints_one_paragraph_and_exits_1(raw_data, tmp_path):
    path, _ = binary_file(raw_data)
    out = tmp_path / "validated"
    proc = subprocess.run(
        [LMFORGE, "validate", "--data-dir", str(raw_data), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: lmforge validate: {path}: binary file")
    assert proc.stderr.strip().count("\n") == 0
    assert not out.exists()
