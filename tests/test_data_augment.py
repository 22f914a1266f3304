"""The augment stage: seeded, provenance kept, training split only, validated again."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from lmforge.config import load_config
from lmforge.data import augment as aug
from lmforge.data.augment import OPS, augment
from lmforge.errors import DataError

pytestmark = pytest.mark.usefixtures("data_store")  # MLflow runs go to a throwaway store


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_only_train_is_augmented_and_copies_keep_provenance(micro_cfg, validated, augmented):
    for kind in ("corpus", "labelled"):
        for split in ("validation", "test"):
            src, dst = validated / kind / f"{split}.jsonl", augmented / kind / f"{split}.jsonl"
            assert dst.read_bytes() == src.read_bytes()
        originals = {r["id"]: r for r in records(validated / kind / "train.jsonl")}
        out = records(augmented / kind / "train.jsonl")
        copies = [r for r in out if "augmented_from" in r]
        assert [r for r in out if "augmented_from" not in r] == list(originals.values())
        assert copies, "share=0.3 of a few dozen records gives some copies"
        for c in copies:
            src = originals[c["augmented_from"]]  # a copy's source is a training record
            assert c["id"] == f"{src['id']}#aug" and c["text"] != src["text"]
            assert c["ops"] and set(c["ops"]) <= set(OPS)
            assert c.get("label") == src.get("label")
        share = len(copies) / len(originals)
        assert 0.1 < share < 0.5  # about augment.share = 0.3
    report = json.loads((augmented / "report.json").read_text())
    assert report["success"] and set(report["datasets"]) == {"corpus_train", "labelled_train"}
    metrics = json.loads((augmented / "metrics.json").read_text())
    assert metrics["corpus"]["augmented"] == sum(
        1 for r in records(augmented / "corpus" / "train.jsonl") if "ops" in r
    )


def test_same_seed_same_bytes_other_seed_other_bytes(micro_cfg, validated, augmented, tmp_path):
    augment(micro_cfg, validated, tmp_path / "again")
    assert (tmp_path / "again" / "corpus" / "train.jsonl").read_bytes() == (
        augmented / "corpus" / "train.jsonl"
    ).read_bytes()
    other = load_config(
        None, ["augment.seed=99", "data.validation_share=0.2", "data.test_share=0.2"]
    )
    augment(other, validated, tmp_path / "other")
    assert (tmp_path / "other" / "corpus" / "train.jsonl").read_bytes() != (
        augmented / "corpus" / "train.jsonl"
    ).read_bytes()


def test_labelled_set_can_be_left_alone(validated, tmp_path):
    cfg = load_config(None, ["augment.augment_labelled=false"])
    result = augment(cfg, validated, tmp_path / "out")
    assert result.augmented["labelled"] == 0 and result.augmented["corpus"] > 0
    assert (tmp_path / "out" / "labelled" / "train.jsonl").read_bytes() == (
        validated / "labelled" / "train.jsonl"
    ).read_bytes()


def test_copies_outside_the_bounds_are_rejected(validated, tmp_path):
    cfg = load_config(
        None, ["augment.share=1.0", "augment.p_random_insertion=0.9", "data.max_chars=600"]
    )
    originals = records(validated / "corpus" / "train.jsonl")
    assert max(len(r["text"]) for r in originals) <= 600, "the originals pass the bound"
    result = augment(cfg, validated, tmp_path / "out")
    assert result.rejected["corpus"] > 0
    out = records(tmp_path / "out" / "corpus" / "train.jsonl")
    assert all(len(r["text"]) <= 600 for r in out)
    assert len(out) == len(originals) + result.augmented["corpus"]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["corpus"]["rejected"] == result.rejected["corpus"]


def test_augmented_split_is_validated_again(micro_cfg, validated, tmp_path, monkeypatch):
    # An operation that breaks the text in a way the per-record bounds do not look at (a bell
    # character): the second run of the suites catches it and nothing is written.
    real = aug.augment_text

    def buggy(text, cfg, rng):
        new, ops = real(text, cfg, rng)
        return new.replace(" ", "\x07", 1), ops

    monkeypatch.setattr(aug, "augment_text", buggy)
    out = tmp_path / "out"
    with pytest.raises(
        DataError, match=r"corpus_train: expect_column_values_to_be_between\(control_chars"
    ):
        augment(micro_cfg, validated, out)
    assert not out.exists()


def test_missing_input_names_the_stage_to_run(micro_cfg, tmp_path):
    with pytest.raises(DataError, match="run the validate stage first"):
        augment(micro_cfg, tmp_path / "nothing", tmp_path / "out")


# --- the operations ---------------------------------------------------------------------------

WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def test_random_deletion_bounds():
    rng = random.Random(0)
    assert aug.random_deletion(WORDS, 0.0, rng) == WORDS
    kept = aug.random_deletion(WORDS, 1.0, rng)
    assert len(kept) == 1 and kept[0] in WORDS  # never an empty line
    some = aug.random_deletion(WORDS * 50, 0.2, rng)
    assert 300 < len(some) < 500 and Counter(some) <= Counter(WORDS * 50)


def test_random_swap_keeps_the_words():
    out = aug.random_swap(WORDS, 0.5, random.Random(1))
    assert sorted(out) == sorted(WORDS) and out != WORDS


def test_random_insertion_adds_words_of_the_same_line():
    out = aug.random_insertion(WORDS, 0.3, random.Random(2))
    assert len(out) == 13 and set(out) == set(WORDS)


def test_char_noise_changes_letters_only():
    text = "Abc, def! 123 " * 50
    out = aug.char_noise(text, 0.2, random.Random(3))
    assert len(out) == len(text) and out != text
    for a, b in zip(text, out, strict=True):
        assert a == b or (a.isalpha() and b.isalpha())


def test_sentence_shuffle_keeps_sentences_and_paragraphs():
    text = "First one. Second one! Third one? Fourth.\n\nNext para. Last sentence."
    outs = {aug.sentence_shuffle(text, random.Random(seed)) for seed in range(6)}
    assert len(outs) > 1  # it does shuffle
    for out in outs:
        paras = out.split("\n\n")
        assert len(paras) == 2
        for new, old in zip(paras, text.split("\n\n"), strict=True):
            split = aug._SENTENCE_END.split
            assert sorted(split(new)) == sorted(split(old))


def test_augment_text_records_what_changed():
    cfg = load_config(
        None,
        [
            "augment.p_random_deletion=0",
            "augment.p_random_swap=0",
            "augment.p_random_insertion=0",
            "augment.p_sentence_shuffle=0",
            "augment.p_char_noise=0.3",
        ],
    ).augment
    text, ops = aug.augment_text("Some words here and more words there.", cfg, random.Random(5))
    assert ops == ["char_noise"] and text != "Some words here and more words there."
