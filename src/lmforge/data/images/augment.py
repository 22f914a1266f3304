"""The ``image-augment`` step: seeded image transforms of the training split, provenance kept.

Each training pair gets ``augment_copies`` copies, each a random resized crop (the scale and
aspect ranges of ``multimodal.data``, as torchvision's RandomResizedCrop draws them), a
horizontal flip where it keeps the caption true, and a colour jitter (brightness, contrast,
saturation); optionally the caption gets the text path's augmentation (``lmforge.data.augment``).
A flip is never drawn for a caption that names a side or lettering (``flip_unsafe_words``, a
digit, a quotation) or whose row says so (``flip_field``: the shipped stamps carry Tux Paint's
own "nomirror"). What happens to a copy depends only on the seed, the image id and the copy's
number, so a run is reproducible whatever the order. Validation and test pass through unchanged
(the split was made before, by image hash, so no copy of an evaluation image can exist).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config.data import AugmentConfig
from lmforge.config.image_data import ImageDataConfig
from lmforge.data.images.pairs import PAIRS_FILE, SPLITS, image_name, load_image, write_split
from lmforge.data.images.store import png_bytes
from lmforge.errors import DataError
from lmforge.outputs import atomic_output_dir, write_json

_QUOTE = re.compile(r"[\"“”„«»]|\d")


@dataclass
class ImageAugmentResult:
    pairs: dict[str, int]  # split -> pairs written (train: originals and copies)
    augmented: int  # copies added
    flipped: int
    out_dir: str


def flip_blocked(caption: str, flip_ok: bool, unsafe_words: list[str]) -> str | None:
    """Why a mirror image would make ``caption`` false (None: a flip keeps it true)."""
    if not flip_ok:
        return "row says flip_ok false"
    words = set(re.findall(r"[^\W\d_]+", caption.lower()))
    hit = sorted(words & {w.lower() for w in unsafe_words})
    if hit:
        return f"caption says {hit[0]!r}"
    if _QUOTE.search(caption):
        return "caption has a digit or a quotation"
    return None


def _crop_box(w: int, h: int, cfg: ImageDataConfig, rng: random.Random) -> tuple[int, ...]:
    """(left, top, width, height) of a random resized crop; the whole image if none fits."""
    log_lo, log_hi = -math.log(cfg.crop_ratio_max), math.log(cfg.crop_ratio_max)
    for _ in range(10):
        area = w * h * rng.uniform(cfg.crop_scale_min, 1.0)
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, w - cw), rng.randint(0, h - ch), cw, ch
    return 0, 0, w, h


def augmented_copy(
    rec: dict[str, Any], img, k: int, cfg: ImageDataConfig, text_cfg: AugmentConfig | None
):
    """(PNG bytes, caption, provenance) of copy ``k`` of the pair ``rec`` with image ``img``."""
    from PIL import Image, ImageEnhance, ImageOps

    rng = random.Random(f"{cfg.augment_seed}\x1f{rec['id']}\x1f{k}")
    left, top, cw, ch = _crop_box(*img.size, cfg, rng)
    out = img.crop((left, top, left + cw, top + ch)).resize(img.size, Image.Resampling.LANCZOS)
    blocked = flip_blocked(rec["caption"], rec.get("flip_ok", True), cfg.flip_unsafe_words)
    flip = rng.random() < cfg.flip_p and blocked is None  # drawn always: same stream either way
    if flip:
        out = ImageOps.mirror(out)
    factors = {}
    for name, enhancer, amount in (
        ("brightness", ImageEnhance.Brightness, cfg.jitter_brightness),
        ("contrast", ImageEnhance.Contrast, cfg.jitter_contrast),
        ("saturation", ImageEnhance.Color, cfg.jitter_saturation),
    ):
        factors[name] = round(rng.uniform(1 - amount, 1 + amount), 4)
        out = enhancer(out).enhance(factors[name])
    caption, ops = rec["caption"], []
    if cfg.augment_captions:
        from lmforge.data.augment import augment_text

        caption, ops = augment_text(caption, text_cfg or AugmentConfig(), rng)
    provenance = {
        "of": rec["id"],
        "seed": cfg.augment_seed,
        "copy": k,
        "crop": [left, top, cw, ch],
        "flip": flip,
        "flip_blocked": blocked,
        **factors,
        "caption_ops": ops,
    }
    return png_bytes(out.convert("RGB")), caption, provenance


def _records(split_dir: Path) -> list[dict[str, Any]]:
    path = split_dir / PAIRS_FILE
    if not path.is_file():
        raise DataError(
            f"{path}: no such file; --in must be the output of `lmforge image-validate` "
            "(outputs/images/validated); run that step first."
        )
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def augment_images(
    cfg: ImageDataConfig,
    validated_dir: Path,
    out_dir: Path,
    text_cfg: AugmentConfig | None = None,
) -> ImageAugmentResult:
    """Augment ``validated_dir``'s training split into ``out_dir`` (val/test copied)."""
    validated_dir, out_dir = Path(validated_dir), Path(out_dir)
    train = _records(validated_dir / "train")
    counts: dict[str, int] = {}
    tally: Counter = Counter()
    with atomic_output_dir(out_dir) as tmp:
        for split in SPLITS[1:]:
            shutil.copytree(validated_dir / split, tmp / split)
            counts[split] = len(_records(tmp / split))
        (tmp / "train" / "images").mkdir(parents=True)
        seen, written = {r["id"] for r in train}, []
        for rec in train:
            src = validated_dir / "train" / rec["image"]
            shutil.copyfile(src, tmp / "train" / rec["image"])
            written.append(rec)
            img = load_image(src)
            for k in range(cfg.augment_copies):
                png, caption, prov = augmented_copy(rec, img, k, cfg, text_cfg)
                new_id = hashlib.sha256(png).hexdigest()[:16]
                if new_id in seen:  # the transforms gave back a stored image: not a new pair
                    tally["identical"] += 1
                    continue
                seen.add(new_id)
                (tmp / "train" / image_name(new_id)).write_bytes(png)
                written.append(
                    {
                        **rec,
                        "id": new_id,
                        "image": image_name(new_id),
                        "caption": caption,
                        "augmentation": prov,
                    }
                )
                tally["copies"] += 1
                tally["flipped"] += prov["flip"]
                tally["flip_blocked"] += prov["flip_blocked"] is not None
                tally.update(f"caption_{op}" for op in prov["caption_ops"])
        counts["train"] = write_split(tmp / "train", written)
        report = {
            "stage": "image-augment",
            "seed": cfg.augment_seed,
            "copies_per_image": cfg.augment_copies,
            "originals": len(train),
            "augmented": tally["copies"],
            "identical_dropped": tally["identical"],
            "flipped": tally["flipped"],
            "flip_blocked": tally["flip_blocked"],
            "caption_ops": {k[8:]: v for k, v in tally.items() if k.startswith("caption_")},
            "splits": counts,
        }
        write_json(tmp / "report.json", report)
        write_json(tmp / "metrics.json", {k: v for k, v in report.items() if k != "stage"})
    return ImageAugmentResult(counts, tally["copies"], tally["flipped"], str(out_dir))
