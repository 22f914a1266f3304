"""The validate stage's columnar path for plain text (``lmforge.data.columnar``) against its
record path: the same documents as text files and as JSON lines must give byte-identical split
files, the same profile and the same personal-data tally, whatever the text holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_fixtures import MICRO

from lmforge.config import load_config
from lmforge.data.pii import Allow, Tally
from lmforge.data.records import content_id
from lmforge.data.split import SPLITS
from lmforge.data.validate import split_and_profile

# What the columns do by bytes must match what the record path does by characters: quotes and
# backslashes to escape, tabs, line ends and form feeds (a CR never arrives: the text reader reads
# universal newlines), control characters (escaped by json.dumps,
# counted by the profile), non-ASCII letters and digits, an emoji, and personal data to mask
# (an email, a phone number) next to digits that are none.
TEXTS = [
    'She said "hello" and left \\ back-slash, then\ta tab.',
    "Line one\nline two, with a form feed \x0c and a bell \x07 and DEL \x7f.",
    "Café au lait, naïve façade, Straße; 東京の天気は晴れ。",
    "Emoji 🎉 and Arabic-Indic digits ٣٤٥ in a sentence.",
    "Write to jane.doe@example.com or call +44 20 7946 0958 today.",
    "Or to kai.berg (at) example (dot) org, which has neither an at sign nor a digit.",
    "Order 12345 shipped on 2002-08-22 in 3 boxes.",
    "Plain words only, nothing to see here at all.",
    "  leading spaces and a trailing space ",
    "x" * 3 + " 42",
]


def _write_text(root: Path, docs: list[str], per_file: bool) -> list[Path]:
    root.mkdir(parents=True)
    if per_file:
        paths = [root / f"doc{i:02d}.txt" for i in range(len(docs))]
        for path, text in zip(paths, docs, strict=True):
            path.write_text(text + "\n", newline="")
        return paths
    path = root / "part.txt"
    path.write_text("\n\n".join(docs) + "\n", newline="")
    return [path]


def _write_jsonl(root: Path, docs: list[str], stems: list[str]) -> list[Path]:
    """The documents as JSON lines without ids: read with ``data.id_field=''`` (``NO_IDS``),
    their ids are derived as the text files' are, after masking."""
    root.mkdir(parents=True)
    path = root / "same.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for text, stem in zip(docs, stems, strict=True):
            rec = {"source": stem, "text": text}
            fh.write(json.dumps(rec) + "\n")
    return [path]


NO_IDS = "data.id_field="  # ids derived from the (masked) text, as plain text's always are
RAW = "data.curate_normalise=false"
WHERE = ["file", "line"]  # where each record came from (its file and line)


def _run(tmp_path: Path, name: str, paths: list[Path], mode: str, *sets: str):
    cfg = load_config(None, [*MICRO, f"data.pii={mode}", *sets]).data
    pii = Tally(mode, Allow(cfg.pii_allow))
    prof, counts = split_and_profile(cfg, "corpus", paths, tmp_path / name, pii)
    files = {s: (tmp_path / name / f"{s}.jsonl").read_bytes() for s in SPLITS}
    return prof, counts, files, pii.summary(["corpus"], SPLITS)["datasets"]["corpus"]


@pytest.mark.parametrize("mode", ["mask", "drop", "keep"])
@pytest.mark.parametrize("per_file", [True, False], ids=["file", "blank_line"])
def test_text_files_give_what_the_same_json_lines_give(tmp_path, mode, per_file):
    docs = TEXTS * 40  # several splits' worth; repeats are allowed here (no suite runs)
    docs = [f"{text} #{i}" if i % 2 else text for i, text in enumerate(docs)]
    paths = _write_text(tmp_path / "txt", docs, per_file)
    stems = [p.stem for p in paths] if per_file else ["part"] * len(docs)
    # Normalising off: the control characters reach the per-document fallbacks (curation on,
    # both paths: tests/test_curate.py).
    text_sets = ["data.corpus_glob=txt/*.txt", RAW]
    if not per_file:
        text_sets.append("data.text_documents=blank_line")
    fast = _run(tmp_path, "fast", paths, mode, *text_sets)
    slow = _run(tmp_path, "slow", _write_jsonl(tmp_path / "jl", docs, stems), mode, NO_IDS, RAW)
    fast_prof, fast_counts, fast_files, fast_pii = fast
    slow_prof, slow_counts, slow_files, slow_pii = slow

    assert fast_files == slow_files
    assert fast_counts == slow_counts and sum(fast_counts.values()) > 0
    assert fast_pii == slow_pii
    if mode != "keep":
        assert slow_pii["train"]["records"] + slow_pii["test"]["records"] > 0
    assert fast_prof.chars == slow_prof.chars
    assert fast_prof.batches and not slow_prof.batches  # Arrow columns against lists
    fast_rows, slow_rows = fast_prof.pending_rows(), slow_prof.pending_rows()
    for name, values in slow_rows.items():
        if name not in WHERE:  # the same documents, from other files
            assert fast_rows[name] == values, name
    # the texts that need the per-document fallbacks were really there
    assert any(c > 0 for c in slow_rows["control_chars"])
    assert any(s < 1 for s in slow_rows["letter_share"])
    # and GX sees the same table either way
    fast_frame, slow_frame = (p.frame().drop(columns=WHERE) for p in (fast_prof, slow_prof))
    assert fast_frame.astype(object).equals(slow_frame.astype(object))


def test_a_labelled_set_as_plain_text_is_refused_with_the_fix(tmp_path):
    from lmforge.data.validate import raw_files
    from lmforge.errors import DataError

    root = tmp_path / "data"
    (root / "corpus").mkdir(parents=True)
    (root / "corpus" / "a.txt").write_text("a document\n")
    (root / "labelled.txt").write_text("some text\n")
    cfg = load_config(None, [*MICRO, "data.corpus_glob=corpus/*.txt"]).data
    cfg.labelled_file = "labelled.txt"
    with pytest.raises(DataError, match=r"labelled\.txt: plain text has no labels.*CSV"):
        raw_files(cfg, root)


def test_the_batch_split_is_the_record_split():
    """``split_codes`` (the columns' inlined hash) puts every id where ``split_of`` does."""
    from lmforge.data.split import split_codes, split_of

    ids = [content_id(f"document {i}") for i in range(3000)] + ["doc-1", "a", ""]
    shares = ("salt-x", 0.2, 0.3)
    codes = split_codes([i.encode() for i in ids], *shares)
    assert [SPLITS[c] for c in codes] == [split_of(i, *shares) for i in ids]
    assert set(codes) == {0, 1, 2}


@pytest.mark.parametrize("mode", ["mask", "drop"])
def test_worker_processes_write_what_one_process_writes(tmp_path, monkeypatch, mode):
    """Text files read and validated by spawned workers (``lmforge.data.workers``) come back
    in reading order, around the records of a JSON-lines file read in the middle: the same split
    files, profile and personal-data tally as in one process, and no part file left behind."""
    from lmforge.data import sources, workers

    started = []

    class Recorded(workers.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            started.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(sources, "ARROW_BATCH", 16)  # 360 documents a file: 23 batches
    monkeypatch.setattr(workers, "POOL_MIN_BYTES", 0)  # a pool for this little text too
    monkeypatch.setattr(workers, "ProcessPoolExecutor", Recorded)
    docs = [f"{text} #{i}" for i, text in enumerate(TEXTS * 40)]
    paths = [
        *_write_text(tmp_path / "a", docs, per_file=False),
        *_write_jsonl(tmp_path / "b", [f"{d} (b)" for d in docs[:50]], ["b"] * 50),
        *_write_text(tmp_path / "c", [f"{d} (c)" for d in docs], per_file=False),
    ]
    # quality rules off: these short test texts (3 words, a '#') are what they remove
    sets = ("data.text_documents=blank_line", NO_IDS, "data.curate_quality=false")
    one = _run(tmp_path, "one", paths, mode, *sets, "data.num_proc=1")
    assert started == []
    two = _run(tmp_path, "two", paths, mode, *sets, "data.num_proc=2")
    assert started == [(2,)]  # one pool, two workers, for the first text file onwards
    (one_prof, one_counts, one_files, one_pii), (two_prof, two_counts, two_files, two_pii) = (
        one,
        two,
    )
    assert two_files == one_files and two_counts == one_counts
    assert two_pii == one_pii and sum(one_pii["train"][k] for k in ("email", "phone")) > 0
    one_rows = one_prof.pending_rows()
    assert two_prof.pending_rows() == one_rows and two_prof.chars == one_prof.chars
    assert sum(one_counts.values()) == len(one_rows["id"]) == len(one_prof) > len(docs)
    assert {p.name for p in (tmp_path / "two").iterdir()} == {f"{s}.jsonl" for s in SPLITS}


def test_a_file_a_worker_cannot_read_stops_the_stage_naming_it(tmp_path, monkeypatch):
    from lmforge.data import workers
    from lmforge.errors import DataError

    monkeypatch.setattr(workers, "POOL_MIN_BYTES", 0)
    paths = _write_text(tmp_path / "a", TEXTS * 10, per_file=False)
    bad = tmp_path / "a" / "latin.txt"
    bad.write_bytes("Caf\xe9 au lait, the old man said.\n".encode("latin1"))
    sets = ("data.text_documents=blank_line", "data.num_proc=2")
    with pytest.raises(DataError, match=r"latin\.txt: invalid UTF-8.*iconv"):
        _run(tmp_path, "out", [*paths, bad], "mask", *sets)


def test_paragraphs_are_trimmed_and_blank_ones_dropped_as_the_kernels_do():
    """``columnar.paragraphs`` runs Arrow's trim kernels only where they can change something;
    on random texts of line ends, ASCII and Unicode whitespace, control characters and letters
    (sliced arrays too) it must give what the kernels give on every text."""
    import random

    import pyarrow as pa
    import pyarrow.compute as pc

    from lmforge.data.columnar import paragraphs

    rng = random.Random(0)
    alphabet = ["a", " ", "\n", "\t", "\u00a0", "\u2003", "é", "\x1c", "\x0b", "x.", "\u3000"]
    for _ in range(1000):
        n = rng.randint(1, 8)
        texts = ["".join(rng.choices(alphabet, k=rng.randint(0, 6))) for _ in range(n)]
        arr = pa.array(texts).slice(rng.randint(0, 1))
        trimmed = pc.utf8_trim(arr, "\n")
        expected = trimmed.filter(pc.not_equal(pc.utf8_trim_whitespace(trimmed), ""))
        assert paragraphs(arr).to_pylist() == expected.to_pylist(), texts


def test_rare_byte_classes_found_by_position_count_what_the_record_path_counts():
    """The profile's control characters, the texts ``json.dumps`` escapes and the personal-data
    candidates are found by byte position (``columnar._positions``); on random texts of those
    bytes, multi-byte characters and empty strings (sliced arrays too) they must say what the
    record path's own functions say of each text."""
    import json
    import random
    import re

    import pyarrow as pa

    from lmforge.data import columnar
    from lmforge.data.expectations import _CONTROL

    rng = random.Random(1)
    alphabet = ["a", " ", "\n", "\t", "\r", "\x07", "\x7f", '"', "\\", "@", "7", "é", "٣", "🎉"]
    for _ in range(1000):
        n = rng.randint(1, 8)
        texts = ["".join(rng.choices(alphabet, k=rng.randint(0, 6))) for _ in range(n)]
        arr = pa.array(texts).slice(rng.randint(0, 1))
        raw, offsets = columnar._bytes_of(arr)
        low = columnar._low(raw, offsets)
        kept = arr.to_pylist()
        control = columnar._control_counts(raw, offsets, low)
        assert control.tolist() == [len(_CONTROL.findall(t)) for t in kept], kept
        escapes = columnar._escaped_any(raw, offsets, low)
        assert escapes.tolist() == [
            json.dumps(re.sub(_CONTROL, "", t), ensure_ascii=False)[1:-1] != re.sub(_CONTROL, "", t)
            for t in kept
        ], kept
        candidates = columnar._pii_candidates(arr)
        assert candidates.tolist() == [bool(re.search(r"[@\d]", t)) for t in kept], kept


@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_a_part_file_is_appended_after_what_was_written(tmp_path, monkeypatch, platform):
    """``JsonlWriters.append_file``: the kernel's copy on Linux, a buffered copy elsewhere; the
    lines written before and after it stay in order."""
    import sys

    from lmforge.data.records import JsonlWriters

    part = tmp_path / "part.jsonl"
    part.write_bytes(b'{"id": "p1"}\n{"id": "p2"}\n')
    monkeypatch.setattr(sys, "platform", platform)
    with JsonlWriters(tmp_path / "out", ["train"]) as writers:
        writers.write("train", {"id": "a"})
        writers.append_file("train", part)
        writers.write_bytes("train", b'{"id": "b"}\n')
        writers.write("train", {"id": "c"})
    lines = (tmp_path / "out" / "train.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "p1", "p2", "b", "c"]


def _killed(*args):
    """In a worker: die as the OOM killer would have it (no exception, no cleanup)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.usefixtures("data_store")  # the stage's MLflow run goes to a throwaway store
def test_a_killed_worker_stops_validate_with_the_fix_and_writes_nothing(tmp_path, monkeypatch):
    from lmforge.config import load_config
    from lmforge.data import workers
    from lmforge.data.validate import validate
    from lmforge.errors import DataError

    monkeypatch.setattr(workers, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(workers, "_validate_files", _killed)  # spawned: pickled by name
    raw = tmp_path / "data"
    _write_text(raw / "corpus", TEXTS * 10, per_file=False)
    (raw / "labelled").mkdir()
    (raw / "labelled" / "spam.jsonl").write_text(
        "".join(
            json.dumps({"id": f"l{i}", "text": f"mail number {i}", "label": ["ham", "spam"][i % 2]})
            + "\n"
            for i in range(40)
        )
    )
    sets = ["data.corpus_glob=corpus/*.txt", "data.text_documents=blank_line", "data.num_proc=2"]
    cfg = load_config(None, [*MICRO, *sets])
    with pytest.raises(DataError, match=r"worker process died.*data\.num_proc"):
        validate(cfg, raw, tmp_path / "validated")
    assert not (tmp_path / "validated").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".validated")]
