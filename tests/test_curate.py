"""Curation in the validate stage (``lmforge.data.curate``) on real-shaped corpora, and inputs
named as real files are: normalised text, long documents split, exact and near duplicates
removed (the first kept, the same for any number of workers), each counted with where it was;
any file name read as the file it names; every quoted record named with its file and line."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from data_fixtures import MICRO, WORDS, labelled_records, write_jsonl

from lmforge.config import load_config
from lmforge.data import curate
from lmforge.data.split import SPLITS, split_of
from lmforge.data.validate import validate
from lmforge.errors import DataError

pytestmark = pytest.mark.usefixtures("data_store")  # MLflow runs go to a throwaway store
LMFORGE = str(Path(sys.executable).with_name("lmforge"))
TXT = "data.corpus_glob=corpus/*.txt"


def prose(rng: random.Random, words: int) -> str:
    """English-like sentences of ``words`` words (a dozen words a sentence)."""
    out = []
    for i in range(words):
        word = rng.choice(WORDS)
        out.append(word.capitalize() if i % 12 == 0 else word + ("." if i % 12 == 11 else ""))
    return " ".join(out)


def numbers(rng: random.Random, n: int) -> str:
    """``n`` four-digit numbers: text the letter-share check refuses, the quality rules keep."""
    return " ".join(str(rng.randint(1000, 9999)) for _ in range(n))


def with_labelled(root: Path) -> Path:
    write_jsonl(root / "labelled" / "spam.jsonl", labelled_records(30))
    return root


def written(out: Path) -> list[dict]:
    return [
        json.loads(line)
        for split in SPLITS
        for line in (out / "corpus" / f"{split}.jsonl").read_text().splitlines()
    ]


def split_bytes(out: Path) -> dict[str, bytes]:
    return {s: (out / "corpus" / f"{s}.jsonl").read_bytes() for s in SPLITS}


# -- 1. any file name is a plain local path ----------------------------------------------------

ODD_NAMES = [
    "3-Authen::SASL::Perl::PLAIN.3pm.gz.txt",  # a chained URL to datasets
    "notes#2.txt",
    "what?.txt",
    "star*.txt",
    "starX.txt",  # what star*.txt would also match as a pattern
    "brackets[1].txt",  # matches nothing as a pattern
    "with spaces.txt",
    "naïve-überlänge.txt",
    "100%.txt",
]


def test_any_file_name_is_read_as_the_file_it_names(tmp_path):
    rng = random.Random(1)
    root = tmp_path / "data"
    (root / "corpus").mkdir(parents=True)
    texts = {}
    for name in ODD_NAMES:
        texts[name] = prose(rng, 40)
        (root / "corpus" / name).write_text(texts[name] + "\n")
    # the labelled set as CSV (read through datasets too) under such a name
    (root / "labelled").mkdir()
    rows = [
        "id,text,label",
        *(
            f"m{i},{r['label']} mail number {i},{r['label']}"
            for i, r in enumerate(labelled_records(30))
        ),
    ]
    (root / "labelled" / "task::v1 #a.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config(None, [*MICRO, TXT, "data.labelled_file='labelled/task::v1 #a.csv'"])
    out = tmp_path / "validated"
    validate(cfg, root, out)
    got = {r["source"]: r["text"] for r in written(out)}
    assert got == {Path(n).stem: t for n, t in texts.items()}
    labelled = sum(len((out / "labelled" / f"{s}.jsonl").read_text().splitlines()) for s in SPLITS)
    assert labelled == 60


# -- 2. a quoted record says where it is ---------------------------------------------------------


def test_failures_name_the_file_and_line_of_each_record(tmp_path):
    rng = random.Random(2)
    root = with_labelled(tmp_path / "data")
    (root / "corpus").mkdir()
    for i in range(5):
        (root / "corpus" / f"doc{i}.txt").write_text(prose(rng, 30) + "\n")
    # numbers, none repeated (a repeated phrase is a quality rule's: removed, not refused)
    (root / "corpus" / "digits::x.txt").write_text(numbers(rng, 80) + "\n")
    blank = root / "blank_line.txt"
    docs = [prose(rng, 20) for _ in range(4)]
    docs[2] = numbers(rng, 30)
    blank.write_text("\n\n".join(docs) + "\n")
    with pytest.raises(DataError) as err:
        validate(load_config(None, [*MICRO, TXT]), root, tmp_path / "v1")
    assert "at corpus/digits::x.txt: line 1 (letter_share=" in str(err.value)
    sets = ["data.corpus_glob=blank_line.txt", "data.text_documents=blank_line"]
    with pytest.raises(DataError) as err:
        validate(load_config(None, [*MICRO, *sets]), root, tmp_path / "v2")
    assert "at blank_line.txt: document 3 (letter_share=" in str(err.value)
    # JSON lines: the line of the file, blank lines counted
    jl = root / "jl" / "a.jsonl"
    jl.parent.mkdir()
    recs = [{"id": f"r{i}", "source": "a", "text": prose(rng, 20)} for i in range(4)]
    recs[3]["text"] = numbers(rng, 30)
    jl.write_text("\n\n".join(json.dumps(r) for r in recs) + "\n")
    with pytest.raises(DataError) as err:
        validate(load_config(None, [*MICRO, "data.corpus_glob=jl/*.jsonl"]), root, tmp_path / "v3")
    assert "e.g. r3 at jl/a.jsonl: line 7 (letter_share=" in str(err.value)


# -- 3. the rules, one at a time ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean", "rules"),
    [
        ("N\bNA\bAM\bME\bE", "NAME", ["overstrike"]),  # bold, as man pages print it
        ("_\bi_\bt_\ba_\bl_\bi_\bc", "italic", ["overstrike"]),  # underlined
        ("a\bb", "b", ["overstrike"]),
        ("\x1b[1mbold\x1b[0m and \x1b]8;;http://x\x07link\x1b]8;;\x07", "bold and link", None),
        ("page one\x0cpage two", "page one\npage two", ["form_feed"]),
        ("bell\x07 and nul\x00 and del\x7f", "bell and nul and del", ["control"]),
        ("windows\r\nline ends\r\n", "windows\nline ends", ["control", "trailing_space"]),
        ("cafe\u0301", "caf\u00e9", ["nfc"]),
        ("trailing   \nspaces\t\n\n", "trailing\nspaces", ["trailing_space"]),
        ("tab\tand\nline end kept", "tab\tand\nline end kept", []),
    ],
)
def test_normalising_removes_what_tools_leave_in_text(raw, clean, rules):
    text, changed = curate.normalise(raw)
    assert text == clean
    if rules is not None:
        assert changed == rules
    assert curate.normalise(text) == (text, [])  # once is enough


def test_a_long_document_is_split_at_blank_lines_into_pieces_under_the_limit():
    rng = random.Random(3)
    paragraphs = [prose(rng, rng.randint(5, 400)) for _ in range(300)]
    paragraphs[7] = "\n".join(prose(rng, 30) for _ in range(200))  # one long paragraph: by lines
    paragraphs[9] = "x" * 5000  # one unbreakable line: cut anywhere
    text = "\n\n".join(paragraphs)
    pieces = curate.pieces(text, 2000)
    assert all(0 < len(p) <= 2000 for _, p in pieces)
    for start, piece in pieces:
        assert text[start : start + len(piece)] == piece  # each where it was, in order
    assert "".join("".join(p.split()) for _, p in pieces) == "".join(text.split())  # all kept
    whole = sum(p in paragraphs for _, p in pieces)
    assert whole >= 0.9 * len(pieces) / 2  # mostly whole paragraphs, packed together


# -- 4. real-shaped corpora through the CLI, as dvc.yaml runs it ---------------------------------


def real_shaped_corpus(root: Path) -> dict[str, str]:
    """Files as a new user brings them (one document a file): byte-identical copies, edited
    copies, a 2 MB document, text exported from tools. Returns name -> what it tests."""
    rng = random.Random(4)
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    licence = "\n\n".join(prose(rng, 120) for _ in range(3))
    for n in range(12):
        (corpus / f"doc{n:02d}.txt").write_text(prose(rng, 150) + "\n")
    for pkg in ("libfoo", "libbar", "libbaz"):  # packages shipping the same copyright file
        (corpus / f"copyright-{pkg}.txt").write_text(licence + "\n")
    words = licence.split()
    words[40] = "Boston"  # the same licence with one word changed and one line added
    (corpus / "copyright-zedited.txt").write_text(" ".join(words) + "\nUpstream: example.org\n")
    long_doc = "\n\n".join(prose(rng, rng.randint(50, 300)) for _ in range(2400))
    assert len(long_doc) > 2_000_000
    (corpus / "zz-2mb.txt").write_text(long_doc + "\n")
    manpage = "N\bNA\bAM\bME\bE\n    \x1b[1mls\x1b[0m - list directory contents  \n\x0c\n"
    (corpus / "ls.1.txt").write_text(manpage + prose(rng, 80) + "\n")
    # another language each (data.languages=[en] removes them)
    (corpus / "de-brücke.txt").write_text(GERMAN + "\n")
    (corpus / "fr-pont.txt").write_text(FRENCH + "\n")
    # what the quality rules remove: a line repeated, a list of tags
    junk = [prose(rng, 12)] + ["Click here to subscribe to our newsletter!"] * 12
    (corpus / "zz-junk-lines.txt").write_text("\n".join(junk) + "\n")
    (corpus / "zz-tags.txt").write_text(" ".join(f"#{w}{i}" for i, w in enumerate(WORDS)) + "\n")
    # a labelled test text inside a corpus document (decontamination removes it)
    leaked = next(r for r in labelled_records(30) if split_of(r["id"], *MICRO_SHARES) == "test")
    (corpus / "zz-leak.txt").write_text(prose(rng, 60) + "\n\n" + leaked["text"] + "\n")
    return {"long": long_doc}


MICRO_SHARES = ("lmforge-v1", 0.2, 0.2)  # data.split_salt and MICRO's validation/test shares
GERMAN = (
    "Die Verwaltung der Stadt hat am Montag bekannt gegeben, dass die neue Brücke über den "
    "Fluss im nächsten Frühjahr eröffnet wird. Nach Angaben der Behörden wurden die Bauarbeiten "
    "trotz des langen Winters rechtzeitig abgeschlossen. Viele Bürger freuen sich darauf, weil "
    "der Weg zur Arbeit dadurch deutlich kürzer wird. Der Bürgermeister dankte allen für ihre "
    "Geduld."
)
FRENCH = (
    "Le conseil municipal a annoncé lundi que le nouveau pont sur la rivière ouvrira au "
    "printemps prochain. Selon les autorités, les travaux ont été terminés à temps malgré un "
    "hiver long et difficile. Beaucoup d'habitants s'en réjouissent, car le trajet vers leur "
    "travail sera bien plus court. Le maire a remercié tout le monde pour sa patience."
)


def test_a_real_shaped_corpus_is_curated_and_the_report_says_what_and_where(tmp_path):
    root = with_labelled(tmp_path / "data")
    made = real_shaped_corpus(root)
    out = tmp_path / "validated"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # curation off: refused, as before (a user who wants the old behaviour gets it)
    off = ["data.curate_normalise=false", "data.curate_split_long=false"]
    off += ["data.curate_exact_dedup=false", "data.curate_near_dedup=false"]
    off += ["data.curate_quality=false", "data.curate_decontaminate=false"]
    with pytest.raises(DataError) as err:
        validate(load_config(None, [*MICRO, TXT, *off]), root, out)
    for refused in ("be_unique(id)", "n_chars", "control_chars"):
        assert refused in str(err.value)
    assert "at corpus/copyright-libbar.txt: line 1" in str(err.value)  # the copy, with its file
    base = [LMFORGE, "validate", "--data-dir", str(root), "--out", str(out)]
    sets = [f"--set={s}" for s in (*MICRO, TXT, "data.languages=[en]")]
    # curation on (the default, English kept): validated, every removal counted with where it
    # was and why
    proc = subprocess.run([*base, *sets], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    cur = report["curation"]
    assert {rule: n for rule, n in cur["removed"].items() if n} == {
        "symbol_ratio": 1,
        "duplicate_lines": 1,
        "language": 2,
        "contaminated": 1,
        "exact_duplicate": 2,
        "near_duplicate": 1,
    }
    assert sorted(
        (e["where"].rsplit("/", 1)[1], e["language"]) for e in cur["examples"]["language"]
    ) == [("de-brücke.txt: line 1", "de"), ("fr-pont.txt: line 1", "fr")]
    (leak,) = cur["examples"]["contaminated"]
    assert leak["where"].endswith("zz-leak.txt: line 1") and leak["shared_ngrams"] > 10
    assert cur["by_file"][f"{root}/corpus/zz-leak.txt"] == {"contaminated": 1}
    (junk,) = cur["examples"]["duplicate_lines"]
    assert junk["where"].endswith("zz-junk-lines.txt: line 1") and junk["measured"] > 0.8
    assert [e["where"] for e in cur["examples"]["exact_duplicate"]] == [
        f"{root}/corpus/copyright-libbaz.txt: line 1",
        f"{root}/corpus/copyright-libfoo.txt: line 1",
    ]
    (near,) = cur["examples"]["near_duplicate"]
    assert near["where"].endswith("copyright-zedited.txt: line 1")
    assert near["kept_where"].endswith("copyright-libbar.txt: line 1")  # the first in order
    for rule in ("overstrike", "escape_sequence", "form_feed", "trailing_space"):
        assert cur["normalised"][rule] == 1, rule
        assert cur["examples"][rule][0]["where"].endswith("ls.1.txt: line 1")
    assert cur["split"]["documents"] == 1 and cur["split"]["pieces"] >= 10
    assert cur["documents_in"] == 23 and cur["by_source"]["copyright-libfoo"] == {
        "exact_duplicate": 1
    }
    recs = written(out)
    assert len(recs) == cur["records_out"] == 23 - 8 - 1 + cur["split"]["pieces"]
    pieces = sorted((r for r in recs if r["source"] == "zz-2mb"), key=lambda r: r["text"][:50])
    assert all(len(r["text"]) <= 200_000 for r in pieces)
    assert sorted(w for r in pieces for w in r["text"].split()) == sorted(made["long"].split())
    ls = next(r for r in recs if r["source"] == "ls.1")
    assert ls["text"].startswith("NAME\n    ls - list directory contents\n\n")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["curation"]["removed"]["exact_duplicate"] == 2  # logged to MLflow too
    page = (out / "report.html").read_text()
    assert "copyright-libfoo.txt: line 1" in page and "near_duplicate" in page
    assert "zz-leak.txt: line 1 <span class='muted'>(shared_ngrams " in page


# -- determinism: input order, any number of workers, either path -------------------------------


def test_duplicates_are_decided_in_input_order_whatever_the_workers(tmp_path, monkeypatch):
    """Copies spread over batches and worker processes: the same documents kept (the first of
    each), the same split files byte for byte, with one process or two."""
    from lmforge.data import sources, workers

    monkeypatch.setattr(sources, "ARROW_BATCH", 8)  # many batches, many worker tasks
    monkeypatch.setattr(workers, "POOL_MIN_BYTES", 0)
    rng = random.Random(5)
    root = with_labelled(tmp_path / "data")
    (root / "corpus").mkdir()
    originals = [prose(rng, 200) for _ in range(20)]  # one word changed: Jaccard 0.95
    for n in range(60):
        text = originals[n % 20]
        if n >= 40:  # a near copy: one word changed
            words = text.split()
            words[30] = "lighthouse"
            text = " ".join(words)
        (root / "corpus" / f"{n:03d}.txt").write_text(text + "\n")
    outs = {}
    for num_proc in (1, 2):
        cfg = load_config(None, [*MICRO, TXT, f"data.num_proc={num_proc}"])
        validate(cfg, root, tmp_path / f"v{num_proc}")
        outs[num_proc] = split_bytes(tmp_path / f"v{num_proc}")
    assert outs[1] == outs[2]
    kept = sorted(r["source"] for r in written(tmp_path / "v1"))
    assert kept == [f"{n:03d}" for n in range(20)]


def test_the_record_path_curates_as_the_columnar_path_does(tmp_path):
    """The same documents as text files and as JSON lines (ids derived from the text): the
    same split files after normalising, splitting and deduplication."""
    rng = random.Random(6)
    docs = [prose(rng, 50) for _ in range(30)]
    docs[3] = docs[1]
    docs[5] = "\x1b[31mred\x1b[0m text  \n" + docs[5] + "\x0c"
    docs[8] = "\n\n".join(prose(rng, 300) for _ in range(40))  # over max_chars=5000 below
    txt = with_labelled(tmp_path / "txt")
    (txt / "corpus").mkdir()
    for n, text in enumerate(docs):
        (txt / "corpus" / f"d{n:02d}.txt").write_text(text + "\n")
    jl = with_labelled(tmp_path / "jl")
    write_jsonl(
        jl / "corpus" / "all.jsonl",
        [{"source": f"d{n:02d}", "text": t} for n, t in enumerate(docs)],
    )
    common = [*MICRO, "data.max_chars=5000"]
    validate(load_config(None, [*common, TXT]), txt, tmp_path / "a")
    validate(load_config(None, [*common, "data.id_field="]), jl, tmp_path / "b")
    assert split_bytes(tmp_path / "a") == split_bytes(tmp_path / "b")
    reports = [json.loads((tmp_path / p / "report.json").read_text()) for p in "ab"]
    a, b = (r["curation"] for r in reports)
    assert a["removed"] == b["removed"] and a["normalised"] == b["normalised"]
    assert a["split"] == b["split"] and a["split"]["documents"] == 1
    assert a["removed"]["exact_duplicate"] == 1


def test_signatures_are_datasketchs_minhash():
    """``curate.signature`` computes for all n-grams at once what ``MinHash.update_batch``
    computes one n-gram a call: a datasketch that changed its scheme would fail here."""
    from datasketch import MinHash

    rules = curate.Rules(True, True, 100, True, True, 0.85, 5, 128, 3)
    text = prose(random.Random(7), 3000)
    mh = MinHash(num_perm=128, seed=1, hashfunc=int)
    mh.update_batch(curate.shingles(text, 5).tolist())
    assert (curate.signature(text, rules) == mh.hashvalues).all()
    assert curate.signature("too few words", rules) is None


def test_near_duplicates_are_found_among_edits_reorderings_and_boilerplate():
    """Recall and precision of near-duplicate removal at the defaults on a synthetic set with
    known near copies: a few words edited, paragraphs reordered, a boilerplate header and
    footer added; the originals and unrelated documents must all stay."""
    import pyarrow as pa

    rules = curate.Rules(True, True, 200_000, True, True, 0.85, 5, 128, 3)
    rng = random.Random(8)
    originals = ["\n\n".join(prose(rng, 80) for _ in range(4)) for _ in range(100)]
    copies = []
    for k, text in enumerate(originals):
        words = text.split(" ")
        if k % 3 == 0:  # 1% of the words replaced
            for i in rng.sample(range(len(words)), 3):
                words[i] = "changed"
            copies.append(" ".join(words))
        elif k % 3 == 1:  # paragraphs in another order
            paras = text.split("\n\n")
            copies.append("\n\n".join(paras[1:] + paras[:1]))
        else:  # boilerplate around it
            copies.append(f"Copyright notice.\n\n{text}\n\nAll rights reserved.")
    others = ["\n\n".join(prose(rng, 80) for _ in range(4)) for _ in range(100)]
    docs = originals + others + copies
    sigs = curate.signatures(pa.array(docs), rules)
    dedup = curate.Deduper(rules, ("s", 0.05, 0.05), curate.Stats())
    kept = [dedup.keep(i, s, str(i), "src", "f", i + 1) for i, s in enumerate(sigs)]
    removed = {i for i, k in enumerate(kept) if not k}
    truth = set(range(200, 300))
    recall = len(removed & truth) / len(truth)
    precision = len(removed & truth) / max(1, len(removed))
    assert precision == 1.0 and recall >= 0.9, (precision, recall)
