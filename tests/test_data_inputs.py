"""Bring your own data: every input kind (plain text, JSON lines with other field names, JSON,
Parquet, CSV, a save_to_disk folder) becomes the same validated, split corpus; labelled sets in
CSV and Parquet with their own columns; a wrong column or an unreadable file is named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from data_fixtures import MICRO, corpus_records, labelled_records, write_jsonl

from lmforge.config import load_config
from lmforge.data.records import content_id
from lmforge.data.split import SPLITS
from lmforge.data.validate import validate
from lmforge.errors import DataError

pytestmark = pytest.mark.usefixtures("data_store")  # MLflow runs go to a throwaway store

LMFORGE = str(Path(sys.executable).parent / "lmforge")
N = 30


def docs(n: int = N, one_paragraph: bool = False) -> list[dict]:
    recs = corpus_records("mine", n)
    if one_paragraph:  # documents separated by blank lines hold none themselves
        recs = [{**r, "text": r["text"].replace("\n\n", " ")} for r in recs]
    return recs


def written(out: Path, kind: str = "corpus") -> list[dict]:
    return [
        json.loads(line)
        for split in SPLITS
        for line in (out / kind / f"{split}.jsonl").read_text().splitlines()
    ]


def with_labelled(root: Path) -> Path:
    write_jsonl(root / "labelled" / "spam.jsonl", labelled_records(30))
    return root


def run(root: Path, tmp_path: Path, *overrides: str) -> Path:
    out = tmp_path / "validated"
    validate(load_config(None, [*MICRO, *overrides]), root, out)
    return out


def dataset(recs: list[dict]):
    import datasets

    return datasets.Dataset.from_list(recs)


# Each input kind: (write the corpus under root/corpus, overrides, expected sources).
def txt_per_file(root: Path) -> tuple[list[str], set[str]]:
    for i, r in enumerate(docs()):
        (root / "corpus").mkdir(parents=True, exist_ok=True)
        (root / "corpus" / f"doc{i:02d}.txt").write_text(r["text"] + "\n")
    return ["data.corpus_glob=corpus/*.txt"], {f"doc{i:02d}" for i in range(N)}


def txt_blank_lines(root: Path) -> tuple[list[str], set[str]]:
    recs = docs(one_paragraph=True)
    (root / "corpus").mkdir(parents=True)
    for name, part in (("a", recs[:12]), ("b", recs[12:])):
        # one, two or three blank lines between documents; a Windows line end or two
        body = "".join(
            r["text"] + ("\n\n", "\n\n\n", "\r\n\r\n\n\n")[i % 3] for i, r in enumerate(part)
        )
        (root / "corpus" / f"{name}.txt").write_bytes(body.encode())
    return ["data.corpus_glob=corpus/*.txt", "data.text_documents=blank_line"], {"a", "b"}


def jsonl_own_fields(root: Path) -> tuple[list[str], set[str]]:
    recs = [{"uid": r["id"], "body": r["text"], "origin": "web"} for r in docs()]
    write_jsonl(root / "corpus" / "mine.jsonl", recs)
    sets = ["data.text_field=body", "data.id_field=uid", "data.source_field=origin"]
    return sets, {"web"}


def json_array(root: Path) -> tuple[list[str], set[str]]:
    (root / "corpus").mkdir(parents=True)
    recs = [{"id": r["id"], "text": r["text"]} for r in docs()]
    (root / "corpus" / "mine.json").write_text(json.dumps(recs, indent=1))
    return ["data.corpus_glob=corpus/*.json", "data.source_field="], {"mine"}


def parquet(root: Path) -> tuple[list[str], set[str]]:
    (root / "corpus").mkdir(parents=True)
    dataset([{"content": r["text"]} for r in docs()]).to_parquet(str(root / "corpus" / "p.parquet"))
    sets = ["data.corpus_glob=corpus/*.parquet", "data.text_field=content", "data.id_field="]
    return [*sets, "data.source_field="], {"p"}


def csv(root: Path) -> tuple[list[str], set[str]]:
    (root / "corpus").mkdir(parents=True)
    recs = [{"n": i, "text": r["text"], "source": "csvs"} for i, r in enumerate(docs())]
    dataset(recs).to_csv(str(root / "corpus" / "c.csv"), index=False)
    return ["data.corpus_glob=corpus/*.csv", "data.id_field=n"], {"csvs"}


def saved_folder(root: Path) -> tuple[list[str], set[str]]:
    dataset([{"text": r["text"], "genre": "tale"} for r in docs()]).save_to_disk(
        str(root / "corpus" / "saved")
    )
    return ["data.corpus_glob=corpus/saved", "data.id_field=", "data.source_field="], {"saved"}


KINDS = [txt_per_file, txt_blank_lines, jsonl_own_fields, json_array, parquet, csv, saved_folder]


@pytest.mark.parametrize("make", KINDS, ids=[k.__name__ for k in KINDS])
def test_each_input_kind_gives_the_validated_corpus(make, tmp_path):
    root = with_labelled(tmp_path / "data")
    overrides, sources = make(root)
    out = run(root, tmp_path, *overrides)
    recs = written(out)
    want = docs(one_paragraph=make is txt_blank_lines)
    assert sorted(r["text"] for r in recs) == sorted(r["text"] for r in want)
    assert {r["source"] for r in recs} == sources
    assert len({r["id"] for r in recs}) == N
    assert all(set(r) >= {"id", "source", "text"} for r in recs)
    if "data.id_field=" in overrides or make in (txt_per_file, txt_blank_lines):
        assert {r["id"] for r in recs} == {content_id(r["text"]) for r in want}
    if make is csv:  # an integer id column is read as strings
        assert {r["id"] for r in recs} == {str(i) for i in range(N)}
    if make is saved_folder:
        assert {r["genre"] for r in recs} == {"tale"}
    report = json.loads((out / "report.json").read_text())
    assert report["success"] and report["datasets"]["corpus"]["records"] == N


def test_content_hash_ids_are_stable_and_catch_repeated_documents(tmp_path):
    root = with_labelled(tmp_path / "data")
    overrides, _ = txt_per_file(root)
    first = {r["id"]: r["text"] for r in written(run(root, tmp_path / "a", *overrides))}
    second = {r["id"]: r["text"] for r in written(run(root, tmp_path / "b", *overrides))}
    assert first == second
    copy = (root / "corpus" / "doc03.txt").read_text()
    (root / "corpus" / "zz-copy.txt").write_text(copy)
    # The copy is removed by curation (the first kept), and said so ...
    report = json.loads((run(root, tmp_path / "c", *overrides) / "report.json").read_text())
    assert report["curation"]["removed"]["exact_duplicate"] == 1
    (example,) = report["curation"]["examples"]["exact_duplicate"]
    assert example["where"].endswith("zz-copy.txt: line 1")
    assert example["kept_where"].endswith("doc03.txt: line 1")
    # ... and without curation the unique-id check catches it.
    off = ["data.curate_exact_dedup=false", "data.curate_near_dedup=false"]
    with pytest.raises(DataError, match=r"expect_column_values_to_be_unique\(id\) failed for 2"):
        run(root, tmp_path / "d", *overrides, *off)


def labelled_table(root: Path, writer: str) -> None:
    recs = labelled_records(30)
    rows = [{"sentence": r["text"], "category": int(r["label"] == "spam")} for r in recs]
    (root / "labelled").mkdir(parents=True)
    ds = dataset(rows)
    if writer == "csv":
        ds.to_csv(str(root / "labelled" / "task.csv"), index=False)
    else:
        ds.to_parquet(str(root / "labelled" / "task.parquet"))


@pytest.mark.parametrize("writer", ["csv", "parquet"])
def test_labelled_table_with_own_columns_and_integer_labels(writer, tmp_path):
    root = tmp_path / "data"
    write_jsonl(root / "corpus" / "tales.jsonl", corpus_records("tales", N))
    labelled_table(root, writer)
    out = run(
        root,
        tmp_path,
        f"data.labelled_file=labelled/task.{writer}",
        "data.labelled_text_field=sentence",
        "data.label_field=category",
        "data.labelled_id_field=",
        "data.labels=[]",  # taken from the training split: the strings "0" and "1"
    )
    recs = written(out, "labelled")
    assert len(recs) == 60 and {r["label"] for r in recs} == {"0", "1"}
    assert all(r["id"] == content_id(r["text"]) for r in recs)
    assert json.loads((out / "labelled" / "labels.json").read_text())["labels"] == ["0", "1"]
    # The corpus keeps its own fields (data.text_field, id_field: the defaults).
    assert {r["id"] for r in written(out)} == {r["id"] for r in corpus_records("tales", N)}


def test_wrong_column_names_the_columns_and_the_setting(tmp_path):
    root = with_labelled(tmp_path / "data")
    overrides, _ = parquet(root)
    with pytest.raises(DataError) as err:
        run(root, tmp_path, *overrides, "data.text_field=body")
    message = str(err.value)
    assert message.startswith(str(root / "corpus" / "p.parquet"))
    assert "no column 'body'" in message and "the columns are 'content'" in message
    assert "Set data.text_field to one of them" in message
    root2 = tmp_path / "data2"
    write_jsonl(root2 / "corpus" / "tales.jsonl", corpus_records("tales", N))
    labelled_table(root2, "csv")
    with pytest.raises(DataError) as err:
        run(root2, tmp_path, "data.labelled_file=labelled/task.csv", "data.labelled_id_field=")
    assert "no column 'text' for the labelled text; the columns are 'sentence', 'category'" in str(
        err.value
    )
    assert "Set data.labelled_text_field to one of them" in str(err.value)


def test_jsonl_with_own_fields_keeps_line_errors(tmp_path):
    root = with_labelled(tmp_path / "data")
    overrides, _ = jsonl_own_fields(root)
    path = root / "corpus" / "mine.jsonl"
    lines = path.read_text().splitlines()
    lines[4] = json.dumps({"uid": "x", "text": "wrong name", "origin": "web"})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        run(root, tmp_path, *overrides)
    assert str(err.value).startswith(f"{path}: line 5: missing field 'body'")
    assert "set data.text_field in params.yaml" in str(err.value)


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("broken.parquet", b"PAR1 this is not parquet at all", "cannot be read as parquet"),
        (
            "latin.txt",
            "Caf\xe9 au lait, the old man said to the king.".encode("latin1"),
            "invalid UTF-8",
        ),
        ("bad.json", b'[{"id": "a", "text": "unclosed', "cannot be read as json"),
        ("notes.xml", b"<doc>text</doc>", "cannot tell the format"),
    ],
)
def test_unreadable_file_is_named(name, content, problem, tmp_path):
    root = with_labelled(tmp_path / "data")
    (root / "corpus").mkdir()
    (root / "corpus" / name).write_bytes(content)
    out = tmp_path / "validated"
    with pytest.raises(DataError) as err:
        run(root, tmp_path, "data.corpus_glob=corpus/*", "data.source_field=", "data.id_field=")
    assert str(err.value).startswith(str(root / "corpus" / name))
    assert problem in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()


def test_cli_validates_a_folder_of_text_files(tmp_path):
    root = with_labelled(tmp_path / "data")
    overrides, _ = txt_per_file(root)
    out = tmp_path / "validated"
    sets = [arg for o in [*MICRO, *overrides] for arg in ("--set", o)]
    proc = subprocess.run(
        [LMFORGE, "validate", "--data-dir", str(root), "--out", str(out), *sets],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(written(out)) == N
