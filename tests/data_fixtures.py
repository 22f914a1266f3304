"""Fixtures of the data-stage tests: small generated corpora in the raw ``data/`` layout.

- ``make_raw_data(root, ...)``: writes ``corpus/*.jsonl`` and ``labelled/spam.jsonl`` of
  generated English-like text (unique ids, unique texts, balanced labels) and returns ``root``.
- ``raw_data``: such a folder under the test's tmp dir.
- ``data_store``: MLflow on a fresh embedded store outside the test's tmp dir (the stages log a
  nested run each); the data test modules use it with ``pytest.mark.usefixtures``.
- ``micro_cfg``: the Config the data tests run with (small vocabulary and blocks, one worker).
- ``validated``, ``augmented``, ``tokenized``: the stage outputs over ``raw_data`` (module-scoped
  runs would share state between tests; these are cheap: well under a second each after GX's
  first import).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lmforge.config import Config, load_config

__all__ = [
    "augmented",
    "data_store",
    "genre_records",
    "make_raw_data",
    "micro_cfg",
    "raw_data",
    "tokenized",
    "validated",
]

WORDS = [
    "the",
    "king",
    "said",
    "that",
    "she",
    "would",
    "go",
    "to",
    "the",
    "river",
    "and",
    "find",
    "a",
    "small",
    "boat",
    "there",
    "while",
    "the",
    "old",
    "man",
    "watched",
    "from",
    "his",
    "house",
    "near",
    "the",
    "market",
    "where",
    "people",
    "sold",
    "bread",
    "fish",
    "wine",
    "and",
    "cloth",
    "in",
    "the",
    "morning",
    "light",
    "a",
    "letter",
    "came",
    "from",
    "the",
    "city",
    "asking",
    "for",
    "money",
    "gold",
    "silver",
    "and",
    "time",
    "we",
    "have",
    "heard",
    "the",
    "news",
    "of",
    "war",
    "and",
    "peace",
    "friends",
    "enemies",
    "brothers",
    "sisters",
    "children",
]

MICRO = [
    "tokenizer.vocab_size=400",
    "tokenizer.block_size=32",
    "tokenizer.num_proc=1",
    "data.validation_share=0.2",
    "data.test_share=0.2",
]


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(5, 14))]
    return " ".join(words).capitalize() + rng.choice([".", ".", "!", "?"])


def paragraph(rng: random.Random, n: int) -> str:
    return " ".join(sentence(rng) for _ in range(n))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def corpus_records(source: str, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(f"{source}-{seed}")
    return [
        {
            "id": f"{source}/{i:04d}",
            "source": source,
            "genre": "fiction",
            "text": paragraph(rng, 4) + "\n\n" + paragraph(rng, 3),
        }
        for i in range(n)
    ]


def labelled_records(n_per_class: int, seed: int = 0) -> list[dict]:
    rng = random.Random(f"labelled-{seed}")
    out = []
    for label in ("ham", "spam"):
        for i in range(n_per_class):
            lead = (
                "Win money now, free gold offer!" if label == "spam" else "Hi, about the meeting."
            )
            out.append(
                {
                    "id": f"mail/{label}/{i:04d}",
                    "label": label,
                    "text": f"{lead}\n\n{paragraph(rng, 3)}",
                }
            )
    return out


def make_raw_data(root: Path, n_corpus: int = 60, n_per_class: int = 40, seed: int = 0) -> Path:
    write_jsonl(root / "corpus" / "tales.jsonl", corpus_records("tales", n_corpus, seed))
    write_jsonl(root / "corpus" / "letters.jsonl", corpus_records("letters", n_corpus // 2, seed))
    write_jsonl(root / "labelled" / "spam.jsonl", labelled_records(n_per_class, seed))
    return root


# A labelled task of five classes made from the corpus we ship (data/corpus/*.jsonl, `make data`):
# each record's `genre` (brown's fifteen genres folded into fiction and nonfiction).
CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
BROWN_FICTION = {"fiction", "adventure", "romance", "mystery", "science_fiction", "humor"}


def genre_of(rec: dict) -> str:
    if rec["source"] == "brown":
        return "fiction" if rec["genre"] in BROWN_FICTION else "nonfiction"
    return rec["genre"]  # kjv: scripture; shakespeare: drama or poetry


def genre_records(per_class: int = 30, words: int = 60) -> list[dict]:
    """``{"id", "text", "label"}``: ``per_class`` corpus records of each genre, spread over the
    files (every k-th by id), each cut to ``words`` words from its middle (past title pages)."""
    if not CORPUS.is_dir():
        raise FileNotFoundError(f"{CORPUS}: the corpus is missing; run `make data` first")
    by_genre: dict[str, list[dict]] = {}
    for path in sorted(CORPUS.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            by_genre.setdefault(genre_of(rec), []).append(rec)
    out = []
    for genre, recs in sorted(by_genre.items()):
        recs.sort(key=lambda r: r["id"])
        step = max(1, len(recs) // per_class)
        for rec in recs[::step][:per_class]:
            tokens = rec["text"].split()
            start = max(0, len(tokens) // 2 - words // 2)
            text = " ".join(tokens[start : start + words])
            out.append({"id": f"genre/{rec['id']}", "text": text, "label": genre})
    return out


@pytest.fixture
def data_store(tmp_path_factory, monkeypatch, blank_store_db) -> Path:
    import shutil

    root = tmp_path_factory.mktemp("data-store")
    shutil.copyfile(blank_store_db, root / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.setenv("LMFORGE_PIPELINE_RUN_ID", f"data-test-{root.name}")
    return root


@pytest.fixture
def raw_data(tmp_path: Path) -> Path:
    return make_raw_data(tmp_path / "data")


@pytest.fixture
def micro_cfg() -> Config:
    return load_config(None, MICRO)


@pytest.fixture
def validated(micro_cfg: Config, raw_data: Path, tmp_path: Path) -> Path:
    from lmforge.data.validate import validate

    validate(micro_cfg, raw_data, tmp_path / "validated")
    return tmp_path / "validated"


@pytest.fixture
def augmented(micro_cfg: Config, validated: Path, tmp_path: Path) -> Path:
    from lmforge.data.augment import augment

    augment(micro_cfg, validated, tmp_path / "augmented")
    return tmp_path / "augmented"


@pytest.fixture
def tokenized(micro_cfg: Config, augmented: Path, tmp_path: Path) -> Path:
    from lmforge.data.tokenize import tokenize

    tokenize(micro_cfg, augmented, tmp_path / "tokenized")
    return tmp_path / "tokenized"
