"""Curation's per-document rules, one at a time (no stage run: cheap): the quality heuristics
(``lmforge.data.quality``), language identification (``lmforge.data.langid``) and
decontamination (``lmforge.data.filters``), and their settings' checks."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest
from data_fixtures import paragraph

from lmforge.config import ConfigError, load_config
from lmforge.data import filters, langid, quality
from lmforge.data.curate import Rules

GERMAN = (
    "Die Verwaltung der Stadt hat am Montag bekannt gegeben, dass die neue Brücke über den Fluss "
    "im nächsten Frühjahr eröffnet wird. Viele Bürger freuen sich darauf."
)


def rules(*sets: str, contaminants: np.ndarray | None = None) -> filters.Screen:
    cfg = load_config(None, list(sets))
    return Rules.of(cfg.data, "corpus", contaminants).screen


def failed(texts: list[str], screen: filters.Screen) -> list[str | None]:
    rule, _ = filters.screen(pa.array(texts, pa.string()), screen)
    return [filters.RULES[k] if k >= 0 else None for k in rule.tolist()]


def test_each_quality_rule_removes_its_junk_and_keeps_prose():
    rng = random.Random(3)
    prose = [paragraph(rng, 6) for _ in range(3)]
    junk = {
        "too_few_words": "Buy now",
        "mean_word_length": "a b c d e f g h i j k l m n o p",
        "symbol_ratio": " ".join(f"#{w}{i}" for i, w in enumerate(paragraph(rng, 3).split())),
        "unpunctuated_lines": "\n".join(f"Item {w} in stock" for w in "abcdefg"),
        "duplicate_lines": "\n".join([paragraph(rng, 1)] + ["Subscribe to the newsletter!"] * 6),
        "top_2gram": paragraph(rng, 2) + " " + "buy now! " * 20,
        "duplicate_5grams": " ".join([paragraph(rng, 3)] * 2),
    }
    screen = rules()
    assert failed(prose, screen) == [None, None, None]
    assert failed(list(junk.values()), screen) == list(junk)
    # each threshold is the setting's: relaxed, the junk it judged is kept
    off = rules("data.curate_quality=false")
    assert failed(list(junk.values()), off) == [None] * len(junk)


def test_quality_measures_match_their_definitions():
    text = "the cat sat\nthe cat sat\non the mat ... #tag\nthe end."
    m = quality.measure(pa.array([text]))
    words = text.split()
    assert m.words[0] == len(words) == 13
    assert m.mean_word_length[0] == pytest.approx(sum(map(len, words)) / 13)
    assert m.symbol_ratio[0] == pytest.approx(2 / 13)  # one ellipsis, one '#'
    assert m.lines[0] == 4 and m.duplicate_lines[0] == pytest.approx(1 / 4)
    assert m.punctuated_lines[0] == pytest.approx(1 / 4)
    # "the cat" and "cat sat" occur twice: 7 characters twice, of the text's
    assert m.top_2gram[0] == pytest.approx(14 / len(text))


def test_language_identification_is_py3langids_own_and_keeps_the_listed():
    texts = [
        GERMAN,
        "Le conseil municipal a annoncé lundi que le nouveau pont ouvrira au printemps.",
        "Совет города объявил в понедельник, что новый мост откроется весной.",
        "THE CITY COUNCIL SAID ON MONDAY THAT THE NEW BRIDGE WILL OPEN IN SPRING.",
        paragraph(random.Random(1), 5),
        "x" * 3000,
    ]
    found, prob = langid.identify(pa.array(texts))
    own = langid._model().identifier  # py3langid's classify, on the same model
    for text, lang, p in zip(texts, found, prob, strict=True):
        assert (lang, pytest.approx(p, abs=1e-4)) == own.classify(text[: langid.CHARS])
    assert found[:4] == ["de", "fr", "ru", "en"]
    kept = failed(texts[:4], rules("data.languages=[en, fr]"))
    assert kept == ["language", None, "language", None]
    assert failed(texts[:4], rules()) == [None] * 4  # empty: every language kept


def test_a_document_sharing_an_evaluation_ngram_is_removed():
    rng = random.Random(5)
    held_out = paragraph(rng, 3)
    words = held_out.split()
    evaluation = filters.evaluation_ngrams([held_out, "too short to count"], 13)
    assert len(evaluation) == len(words) - 12
    screen = rules(contaminants=evaluation)
    prose = paragraph(rng, 4)
    texts = [
        prose + " " + " ".join(words[:13]).upper() + " " + prose,  # 13 words: case ignored
        prose + " " + " ".join(words[:12]) + " " + prose,  # 12 words: not long enough
        prose,
    ]
    rule, detail = filters.screen(pa.array(texts), screen)
    assert [filters.RULES[k] if k >= 0 else None for k in rule] == ["contaminated", None, None]
    assert detail[0] == {"shared_ngrams": 1}
    assert (
        failed(texts, rules("data.curate_decontaminate=false", contaminants=evaluation))
        == [None] * 3
    )


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("data.quality_max_duplicate_lines=1.5", "data.quality_max_duplicate_lines"),
        ("data.quality_min_words=-1", "data.quality_min_words"),
        ("data.quality_min_words=200000", "data.quality_min_words"),
        ("data.quality_min_mean_word_length=12", "data.quality_min_mean_word_length"),
        ("data.languages=[English]", "data.languages"),
        ("data.decontaminate_ngram=2", "data.decontaminate_ngram"),
    ],
)
def test_curation_settings_are_range_checked(setting, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, [setting])


def test_the_evaluation_texts_are_the_labelled_held_out_splits_and_the_sft_held_out_pairs(
    tmp_path,
):
    from data_fixtures import write_jsonl

    from lmforge.data.sft_pairs import Pair, split_pairs
    from lmforge.data.validate import evaluation_ngrams

    rng = random.Random(6)
    labelled = tmp_path / "labelled"
    texts = {split: paragraph(rng, 3) for split in ("train", "validation", "test")}
    for split, text in texts.items():
        write_jsonl(labelled / f"{split}.jsonl", [{"id": split, "text": text, "label": "ham"}])
    pairs = [Pair(paragraph(rng, 2), paragraph(rng, 3)) for _ in range(40)]  # >= 15 words
    write_jsonl(tmp_path / "pairs.jsonl", [vars(p) for p in pairs])
    held = split_pairs(pairs, 0.5)

    def inside(text: str, grams: np.ndarray) -> bool:
        mine = filters.evaluation_ngrams([text], 13)
        return len(mine) > 0 and bool(np.isin(mine, grams).all())

    grams = evaluation_ngrams(load_config(None, []), labelled)
    assert inside(texts["validation"], grams) and inside(texts["test"], grams)
    assert not inside(texts["train"], grams)
    sft = ["finetune.task=sft", f"finetune.sft_data={tmp_path / 'pairs.jsonl'}"]
    grams = evaluation_ngrams(load_config(None, [*sft, "finetune.sft_holdout_share=0.5"]), labelled)
    for split, expected in (("validation", True), ("test", True), ("train", False)):
        for pair in held[split]:
            assert inside(pair.response, grams) == expected, split
    off = load_config(None, ["data.curate_decontaminate=false"])
    assert evaluation_ngrams(off, labelled) is None
