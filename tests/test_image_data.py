"""The image-validate step on hostile and messy captioned images (in process, one GX context)."""

from __future__ import annotations

import json

import pytest
from image_fixtures import good_folder, png, png_claiming, write_captions

from lmforge.config.image_data import ImageDataConfig
from lmforge.data.images.pairs import SPLITS, load_image, read_pairs
from lmforge.data.images.validate import validate_images
from lmforge.errors import DataError

CFG = dict(captions_file="imgs/captions.jsonl", validation_share=0.25, test_share=0.25)


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    root = good_folder(tmp_path_factory.mktemp("raw"))
    out = tmp_path_factory.mktemp("out") / "validated"
    result = validate_images(ImageDataConfig(**CFG), root, out)
    return root, out, result


def test_the_contract_layout_with_clean_rgb_copies_and_a_report(validated):
    _, out, result = validated
    report = json.loads((out / "report.json").read_text())
    assert report["rows"] == 15 and report["pairs"] == 14 == sum(result.pairs.values())
    assert report["expectations"]["success"] and report["expectations"]["evaluated"] >= 8
    ids = []
    for split in SPLITS:
        for pair in read_pairs(out / split):
            img = load_image(pair.image_path)
            assert img.mode == "RGB" and img.size == (32, 32)
            assert pair.image_path.name == f"{pair.id}.png"
            ids.append(pair.id)
    assert len(ids) == len(set(ids)) == 14  # no image in two splits
    assert all(result.pairs[s] > 0 for s in SPLITS)


def test_duplicates_under_another_name_are_removed_and_counted(validated):
    _, out, result = validated
    report = json.loads((out / "report.json").read_text())
    assert result.duplicates == 1 == report["duplicates"]["removed"]
    assert "'copy of 0.png' at imgs/captions.jsonl: line 13" in report["duplicates"]["examples"][0]
    originals = [p["original"] for s in SPLITS for p in _records(out / s)]
    assert "copy of 0.png" not in originals and "a::b 1.png" in originals
    assert "café ñ 2.png" in originals


def test_gps_exif_is_stripped_and_counted_and_captions_masked(validated):
    from PIL import Image

    _, out, _ = validated
    report = json.loads((out / "report.json").read_text())
    stripped = report["metadata_stripped"]
    assert stripped["images"] == 1 and stripped["gps"] == 1 and stripped["camera_serial"] == 1
    (gps,) = [r for s in SPLITS for r in _records(out / s) if r["original"] == "gps.jpg"]
    split = next(s for s in SPLITS if gps in _records(out / s))
    stored = out / split / gps["image"]
    with Image.open(stored) as img:
        assert not img.getexif() and not img.info.get("exif") and not img.info.get("icc_profile")
    assert b"SERIAL-12345" not in stored.read_bytes() and b"ACME" not in stored.read_bytes()
    assert gps["caption"] == "A green field, call <|phone|>."
    assert report["pii"]["found"] == {"phone": 1}


def test_same_config_and_data_give_the_same_ids_and_splits(validated, tmp_path):
    root, out, _ = validated
    validate_images(ImageDataConfig(**CFG), root, tmp_path / "again")
    for split in SPLITS:
        assert (tmp_path / "again" / split / "pairs.jsonl").read_bytes() == (
            out / split / "pairs.jsonl"
        ).read_bytes()


def test_hostile_rows_are_refused_naming_file_and_row_and_nothing_is_written(validated, tmp_path):
    root, out, _ = validated
    before = (out / "train" / "pairs.jsonl").read_bytes()
    imgs = root / "imgs"
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    png(imgs / "cmyk.jpg", mode="CMYK", color=(0, 50, 50, 0))
    png(imgs / "sixteen.png", mode="I;16", color=300)
    png(imgs / "huge.png", size=(600, 500))
    png(imgs / "tiny.png", size=(2, 2))
    png_claiming(imgs / "bomb.png", 60_000, 60_000)  # refused from its header, never decoded
    bad = [
        {"image": "broken.png", "caption": "broken"},
        {"image": "cmyk.jpg", "caption": "cmyk"},
        {"image": "sixteen.png", "caption": "deep"},
        {"image": "huge.png", "caption": "huge"},
        {"image": "tiny.png", "caption": "tiny"},
        {"image": "pic 0.png", "caption": "   "},
        {"image": "missing.png", "caption": "gone"},
        {"image": "bomb.png", "caption": "bomb"},
    ]
    rows = [json.loads(line) for line in (imgs / "captions.jsonl").read_text().splitlines()]
    write_captions(imgs / "hostile.jsonl", rows[:2] + bad)
    cfg = ImageDataConfig(**{**CFG, "captions_file": "imgs/hostile.jsonl", "max_side": 512})
    with pytest.raises(DataError) as err:
        validate_images(cfg, root, out)
    msg = str(err.value)
    assert "8 of 10 image-caption rows refused, nothing was written" in msg
    for name, line, why in [
        ("broken.png", 3, "does not decode"),
        ("cmyk.jpg", 4, "mode CMYK is not in multimodal.data.allowed_modes"),
        ("sixteen.png", 5, "mode I;16"),
        ("huge.png", 6, "size 600x500 is outside"),
        ("tiny.png", 7, "size 2x2"),
        ("pic 0.png", 8, "empty caption"),
        ("missing.png", 9, "image file missing"),
        ("bomb.png", 10, "refused as a decompression bomb"),
    ]:
        assert f"'{name}' at imgs/hostile.jsonl: line {line}" in msg and why in msg
    assert "\n" not in msg and "Traceback" not in msg
    assert (out / "train" / "pairs.jsonl").read_bytes() == before  # the old output untouched


def test_duplicates_refuse_names_both_rows(validated, tmp_path):
    root, _, _ = validated
    with pytest.raises(DataError, match=r"'copy of 0.png' at .*line 13: the same image as "):
        validate_images(ImageDataConfig(**CFG, duplicates="refuse"), root, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_csv_parquet_and_a_saved_dataset_with_own_field_names(tmp_path):
    import datasets
    import pandas as pd
    from PIL import Image

    rows = []
    for i in range(6):
        png(tmp_path / "pics" / f"p{i}.png", color=(i * 40, 10, 10))
        rows.append({"file": f"p{i}.png", "text": f"Tile {i}.", "flip_ok": i % 2 == 0})
    frame = pd.DataFrame(rows)
    frame.to_csv(tmp_path / "pics" / "c.csv", index=False)
    frame.to_parquet(tmp_path / "pics" / "c.parquet")
    features = datasets.Features({"file": datasets.Image(), "text": datasets.Value("string")})
    images = [Image.open(tmp_path / "pics" / r["file"]) for r in rows]
    datasets.Dataset.from_dict(
        {"file": images, "text": [r["text"] for r in rows]}, features=features
    ).save_to_disk(str(tmp_path / "saved"))
    outs = {}
    for name in ("pics/c.csv", "pics/c.parquet", "saved"):
        cfg = ImageDataConfig(captions_file=name, image_field="file", caption_field="text")
        validate_images(cfg, tmp_path, tmp_path / name.replace("/", "_"))
        outs[name] = sorted(
            (r["id"], r["caption"], r.get("flip_ok", True))
            for s in SPLITS
            for r in _records(tmp_path / name.replace("/", "_") / s)
        )
    assert len(outs["saved"]) == 6
    assert outs["pics/c.csv"] == outs["pics/c.parquet"]
    assert [r[:2] for r in outs["saved"]] == [r[:2] for r in outs["pics/c.csv"]]
    assert sum(not r[2] for r in outs["pics/c.csv"]) == 3  # flip_ok false travels to the pair


def test_a_missing_field_is_one_line_naming_the_setting(tmp_path):
    write_captions(tmp_path / "imgs" / "captions.jsonl", [{"img": "a.png", "caption": "x"}])
    with pytest.raises(DataError, match=r"line 1 has no field 'image'.*image_field"):
        validate_images(ImageDataConfig(**CFG), tmp_path, tmp_path / "out")


def _records(split_dir):
    return [json.loads(line) for line in (split_dir / "pairs.jsonl").read_text().splitlines()]


def test_augmentation_is_seeded_keeps_provenance_and_flips_only_true_captions(validated, tmp_path):
    from lmforge.data.images.augment import augment_images, flip_blocked

    _, out, result = validated
    cfg = ImageDataConfig(**CFG, augment_copies=2, flip_p=1.0, augment_captions=True)
    first = augment_images(cfg, out, tmp_path / "a")
    again = augment_images(cfg, out, tmp_path / "b")
    assert (tmp_path / "a/train/pairs.jsonl").read_bytes() == (
        tmp_path / "b/train/pairs.jsonl"
    ).read_bytes()
    assert first.augmented == again.augmented == 2 * result.pairs["train"]
    records = _records(tmp_path / "a" / "train")
    originals = {r["id"]: r for r in records if "augmentation" not in r}
    copies = [r for r in records if "augmentation" in r]
    assert len(originals) == result.pairs["train"] and len(copies) == first.augmented
    for copy in copies:
        prov = copy["augmentation"]
        source = originals[prov["of"]]
        assert prov["flip"] == (prov["flip_blocked"] is None)  # flip_p 1: every true caption
        if "left" in source["caption"]:
            assert not prov["flip"] and prov["flip_blocked"] == "caption says 'left'"
        assert load_image(tmp_path / "a" / "train" / copy["image"]).size == (32, 32)
    assert any(c["augmentation"]["flip"] for c in copies) or all(
        "left" in r["caption"] for r in originals.values()
    )
    for split in ("val", "test"):  # evaluation splits pass through untouched
        assert (tmp_path / "a" / split / "pairs.jsonl").read_bytes() == (
            out / split / "pairs.jsonl"
        ).read_bytes()
    assert flip_blocked("A dog.", False, []) == "row says flip_ok false"
    assert flip_blocked('A sign saying "STOP".', True, []) is not None
    other = augment_images(ImageDataConfig(**CFG, augment_seed=7), out, tmp_path / "c")
    assert other.augmented == result.pairs["train"]
    assert {r["id"] for r in _records(tmp_path / "c" / "train")} != {r["id"] for r in records}
