"""Labelled tasks of any number of classes: a five-class genre task made from the corpus' own
``genre`` field, through validate -> augment -> finetune -> evaluate -> register; labels listed
or taken from the training split; the errors a user meets."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import MICRO, genre_records, make_raw_data, write_jsonl
from mlflow_fixtures import _store_env, tiny_config

from lmforge.data.labels import LABELS_FILE, task_labels
from lmforge.data.split import split_of
from lmforge.data.validate import validate
from lmforge.errors import ConfigError, DataError
from lmforge.metrics import macro_f1, per_class_scores

PER_CLASS = 50  # records of each genre (250 in all)
GENRES = ["drama", "fiction", "nonfiction", "poetry", "scripture"]  # sorted: the derived ids
TASK = [
    *MICRO,
    "data.labelled_file=labelled/genres.jsonl",
    "data.labels=[]",  # taken from the training split; data.min_class_share's default fits
]
# Genres need more than the toy ham/spam: the tiny model's whole context, more steps (~4 s each
# model); the gate's threshold at chance for five classes.
LEARN = [
    "finetune.max_length=64",
    "finetune.max_epochs=11",  # some 225 training records: the 300-step cap binds
    "finetune.max_steps=300",
    "finetune.lr=0.002",
    "finetune.eval_every=150",
    "register.min_primary=0.2",
]


def genre_data(root: Path) -> Path:
    """A raw data folder: the small generated corpus and the genre task as the labelled file."""
    make_raw_data(root, n_corpus=20, n_per_class=2)
    (root / "labelled" / "spam.jsonl").unlink()
    write_jsonl(root / "labelled" / "genres.jsonl", genre_records(per_class=PER_CLASS))
    return root


@pytest.fixture(scope="module")
def genre_run(tiny_stages, tmp_path_factory, blank_store_db) -> dict[str, Path]:
    """The genre task through every stage once (the tiny pretrained model of ``tiny_stages``),
    then registered and promoted; MLflow on a store of its own."""
    from lmforge.data.augment import augment
    from lmforge.evaluate import evaluate
    from lmforge.registry import promote, register
    from lmforge.train.finetune import finetune

    root = tmp_path_factory.mktemp("genres")
    raw = genre_data(root / "data")
    shutil.copyfile(blank_store_db, root / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        _store_env(mp, f"sqlite:///{root / 'mlflow.db'}")
        cfg = tiny_config(*TASK, *LEARN, f"tracking.artifact_location={root / 'mlartifacts'}")
        validate(cfg, raw, root / "validated")
        augment(cfg, root / "validated", root / "augmented")
        finetune(cfg, tiny_stages["pretrain"], root / "augmented", root / "finetune")
        evaluate(
            cfg,
            tiny_stages["pretrain"],
            root / "finetune",
            tiny_stages["tokenized"],
            root / "augmented",
            root / "evaluate",
        )
        register(cfg, tiny_stages["pretrain"], root / "finetune", root / "evaluate", root / "reg")
        promote(cfg, cfg.register.classifier_model_name)
    return {**tiny_stages, "root": root, "raw": raw, "store": root / "mlflow.db"}


@pytest.mark.slow
def test_five_genres_end_to_end(genre_run):
    root = genre_run["root"]
    # validate derived the classes from the training split (sorted) and recorded them.
    recorded = json.loads((root / "validated" / "labelled" / LABELS_FILE).read_text())
    assert recorded["labels"] == GENRES and recorded["source"] == "training split"
    assert (
        sum(recorded["counts"]["train"].values())
        + sum(recorded["counts"]["validation"].values())
        + sum(recorded["counts"]["test"].values())
        == 5 * PER_CLASS
    )
    validated = json.loads((root / "validated" / "report.json").read_text())
    assert validated["labels"] == recorded
    shares = [
        e
        for e in validated["datasets"]["labelled"]["expectations"]
        if e["kwargs"].get("column", "").startswith("is_")
    ]
    assert sorted(e["kwargs"]["column"] for e in shares) == [f"is_{g}" for g in GENRES]
    assert all(e["success"] and e["observed"] == pytest.approx(0.2) for e in shares)
    # augment carries the classes on; finetune's heads have them in that order.
    assert (root / "augmented" / "labelled" / LABELS_FILE).read_bytes() == (
        root / "validated" / "labelled" / LABELS_FILE
    ).read_bytes()
    for variant in ("model", "baseline"):
        config = json.loads((root / "finetune" / variant / "config.json").read_text())
        assert config["id2label"] == {str(i): g for i, g in enumerate(GENRES)}
        assert config["label2id"] == {g: i for i, g in enumerate(GENRES)}
    # evaluate: the N x N confusion, macro-F1 over N, per-class scores, the majority baseline.
    report = json.loads((root / "evaluate" / "report.json").read_text())
    test = [json.loads(line) for line in (root / "augmented" / "labelled" / "test.jsonl").open()]
    assert report["labels"] == GENRES
    confusion = np.array(report["confusion"])
    assert confusion.shape == (5, 5) and confusion.sum() == len(test)
    assert confusion.sum(1).tolist() == [sum(r["label"] == g for r in test) for g in GENRES]
    clf = report["classifier"]
    assert clf["macro_f1"] == pytest.approx(macro_f1(confusion))
    assert list(clf["per_class"]) == GENRES
    assert [c["support"] for c in clf["per_class"].values()] == confusion.sum(1).tolist()
    f1s = [c["f1"] for c in clf["per_class"].values()]
    assert np.mean(f1s) == pytest.approx(clf["macro_f1"])
    train = Counter(
        json.loads(line)["label"]
        for line in (root / "augmented" / "labelled" / "train.jsonl").open()
    )
    assert report["majority"]["label"] == train.most_common(1)[0][0]
    # One class of five always predicted: F1 about 1/3 for it, 0 for the four others.
    assert report["majority"]["macro_f1"] < 0.2
    # It learnt the genres: above chance and the majority class (and promoted in the fixture).
    assert clf["macro_f1"] > 0.2 and clf["accuracy"] > report["majority"]["accuracy"]
    assert [c["name"] for c in report["gate"]["checks"]] == ["threshold", "beats majority class"]
    assert report["gate"]["passed"] is True
    rows = list(csv.DictReader((root / "evaluate" / "plots" / "confusion.csv").open()))
    assert len(rows) == len(test) and {r["actual"] for r in rows} == set(GENRES)
    assert {r["predicted"] for r in rows} <= set(GENRES)
    assert [
        [sum(r["actual"] == a and r["predicted"] == p for r in rows) for p in GENRES]
        for a in GENRES
    ] == report["confusion"]
    from PIL import Image

    with Image.open(root / "evaluate" / "plots" / "confusion.png") as png:
        assert png.size[0] > 400 and png.size[0] == png.size[1]  # grown beyond the 2-class plot
    md = (root / "evaluate" / "report.md").read_text()
    assert all(f"| {g} | " in md for g in GENRES)


@pytest.mark.slow
def test_the_registry_and_serving_carry_the_five_labels(genre_run, monkeypatch):
    import mlflow
    import yaml

    _store_env(monkeypatch, f"sqlite:///{genre_run['store']}")
    cfg = tiny_config(*TASK)
    uri = f"models:/{cfg.register.classifier_model_name}@champion"
    texts = ["And the LORD spake unto Moses, saying", "The jury said Friday an investigation"]
    out = mlflow.pyfunc.load_model(uri).predict(texts)
    assert len(out) == 2 and set(out["label"]) <= set(GENRES)
    local = Path(mlflow.artifacts.download_artifacts(uri))
    flavour = yaml.safe_load((local / "MLmodel").read_text())
    outputs = json.loads(flavour["signature"]["outputs"])
    assert [o["name"] for o in outputs] == ["label", "score"]
    config = json.loads((local / "model" / "config.json").read_text())
    assert list(config["id2label"].values()) == GENRES
    # the logged input example is a text of this task (finetune logs the model where it trains
    # it, with its first validation text: the test split stays unread there), not a spam email
    first = (genre_run["root"] / "augmented" / "labelled" / "validation.jsonl").read_text()
    served = json.loads((local / "serving_input_example.json").read_text())
    assert served["inputs"] == [json.loads(first.splitlines()[0])["text"][:300]]


@pytest.mark.slow
def test_a_champion_of_other_classes_is_reported_not_compared(genre_run, trained_stages, tmp_path):
    """The ham/spam classifier evaluated while the five-genre one is champion: no numbers of a
    different task are compared; the gate (threshold, majority) decides alone."""
    from lmforge.evaluate import evaluate

    with pytest.MonkeyPatch.context() as mp:
        _store_env(mp, f"sqlite:///{genre_run['store']}")
        cfg = tiny_config(f"tracking.artifact_location={tmp_path / 'mlartifacts'}")
        result = evaluate(
            cfg,
            trained_stages["pretrain"],
            trained_stages["finetune"],
            trained_stages["tokenized"],
            trained_stages["augmented"],
            tmp_path / "eval",
        )
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["champion"] is None and result.champion_version is None
    (other,) = [c for c in report["gate"]["comparisons"] if "champion" in c["name"]]
    assert other["name"] == "beats champion v1" and not other["passed"]
    assert "not compared" in other["detail"] and "scripture" in other["detail"]
    assert result.passed is True


def _labelled(root: Path) -> Path:
    return root / "labelled" / "genres.jsonl"


def _id_in(split: str, cfg, stem: str) -> str:
    """A record id that the hash split puts in ``split``."""
    d = cfg.data
    return next(
        rid
        for rid in (f"{stem}/{i}" for i in range(1000))
        if split_of(rid, d.split_salt, d.validation_share, d.test_share) == split
    )


@pytest.mark.usefixtures("data_store")
@pytest.mark.parametrize("split", ["validation", "test"])
def test_a_label_the_training_split_lacks_is_named(split, tmp_path):
    cfg = tiny_config(*TASK)
    raw = genre_data(tmp_path / "data")
    records = [json.loads(line) for line in _labelled(raw).open()]
    stray = _id_in(split, cfg, "stray")
    records.append(
        {"id": stray, "text": "Dearly beloved, we are gathered here.", "label": "sermon"}
    )
    write_jsonl(_labelled(raw), records)
    with pytest.raises(DataError) as err:
        validate(cfg, raw, tmp_path / "out")
    message = str(err.value)
    assert f"the {split} split has label(s) 'sermon' (1 records, e.g. id {stray!r})" in message
    assert "labelled/genres.jsonl" in message and "list data.labels" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("data_store")
def test_derived_labels_check_min_class_share_at_validate_time(tmp_path):
    raw = genre_data(tmp_path / "data")
    cfg = tiny_config(*TASK, "data.min_class_share=0.25")  # the config alone cannot know N
    with pytest.raises(ConfigError, match=r"0\.25 for the 5 labels .* \(at most 0\.2\)"):
        validate(cfg, raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=r"0\.25 for 5 labels cannot all hold"):
        tiny_config(*TASK, "data.min_class_share=0.25", f"data.labels={GENRES}")


@pytest.mark.usefixtures("data_store")
def test_the_default_class_share_scales_with_the_number_of_classes(tmp_path):
    """``min_class_share: null`` is 60% of an even split: 0.3 for two classes, as the old fixed
    default, and 0.12 for five, so a balanced five-class task needs no tuning while a class
    holding a twentieth of the records is still refused by name."""
    assert tiny_config(*MICRO).data.class_share_floor(2) == 0.3
    assert tiny_config(*TASK).data.class_share_floor(5) == pytest.approx(0.12)
    raw = genre_data(tmp_path / "data")
    validate(tiny_config(*TASK), raw, tmp_path / "balanced")
    few = [r for r in genre_records(per_class=PER_CLASS) if r["label"] != "poetry"]
    few += [r for r in genre_records(per_class=PER_CLASS) if r["label"] == "poetry"][:10]
    write_jsonl(raw / "labelled" / "genres.jsonl", few)
    with pytest.raises(DataError, match=r"class 'poetry' has a share of 0\.0\d+ .* 0\.12"):
        validate(tiny_config(*TASK), raw, tmp_path / "skewed")
    assert not (tmp_path / "skewed").exists()


@pytest.mark.usefixtures("data_store")
def test_a_listed_class_without_records_is_named(tmp_path):
    raw = make_raw_data(tmp_path / "data")
    cfg = tiny_config(*MICRO, "data.labels=[ham, spam, eggs]", "data.min_class_share=0.2")
    with pytest.raises(
        DataError, match=r"class 'eggs' is missing \(none of the 80 records has it\)"
    ):
        validate(cfg, raw, tmp_path / "out")


@pytest.mark.usefixtures("data_store")
def test_listed_labels_keep_their_order_and_stale_splits_are_refused(tmp_path):
    raw = make_raw_data(tmp_path / "data")
    cfg = tiny_config(*MICRO, "data.labels=[spam, ham]")
    validate(cfg, raw, tmp_path / "out")
    recorded = json.loads((tmp_path / "out" / "labelled" / LABELS_FILE).read_text())
    assert recorded["labels"] == ["spam", "ham"] and recorded["source"] == "data.labels"
    assert task_labels(cfg, tmp_path / "out" / "labelled") == ["spam", "ham"]
    assert task_labels(tiny_config("data.labels=[]"), tmp_path / "out" / "labelled") == [
        "spam",
        "ham",
    ]
    with pytest.raises(DataError, match=r"validated with labels \['spam', 'ham'\], but data"):
        task_labels(tiny_config(), tmp_path / "out" / "labelled")  # ham, spam: other ids
    with pytest.raises(DataError, match=r"labels\.json: missing; with data\.labels empty"):
        task_labels(tiny_config("data.labels=[]"), tmp_path / "nowhere")


def test_per_class_scores_match_their_definition():
    confusion = np.array([[3, 1, 0], [0, 2, 2], [0, 0, 0]])  # class c: never true, never guessed
    scores = per_class_scores(confusion, ["a", "b", "c"])
    assert scores["a"] == {
        "precision": 1.0,
        "recall": 0.75,
        "f1": pytest.approx(6 / 7),
        "support": 4,
    }
    assert scores["b"]["precision"] == pytest.approx(2 / 3) and scores["b"]["recall"] == 0.5
    assert scores["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert macro_f1(confusion) == pytest.approx(np.mean([s["f1"] for s in scores.values()]))
