"""The validated image-text layout and its reader (the contract with the multimodal model).

A split folder ``<root>/<split>/`` holds ``pairs.jsonl`` (one JSON object a line: ``id``,
``image`` relative to the split folder, ``caption``, ``source``; augmented copies add
``augmentation``) and ``images/<id>.png`` (RGB PNG, no metadata, ``resize_to`` square).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import DataError

SPLITS = ("train", "val", "test")
PAIRS_FILE = "pairs.jsonl"
IMAGES_DIR = "images"


@dataclass(frozen=True)
class ImagePair:
    id: str
    image_path: Path
    caption: str
    source: str


def read_pairs(split_dir: Path) -> list[ImagePair]:
    """The pairs of one split folder, in file order; refuses a missing file or image."""
    split_dir = Path(split_dir)
    path = split_dir / PAIRS_FILE
    if not path.is_file():
        raise DataError(
            f"{path}: no such file; point at a split folder written by `lmforge image-validate` "
            "(outputs/images/validated/train, ...) or run that step first."
        )
    pairs = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                pair = ImagePair(rec["id"], split_dir / rec["image"], rec["caption"], rec["source"])
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(
                    f"{path}: line {n} is not a pair record ({type(exc).__name__}: {exc}); the "
                    "file is written by `lmforge image-validate`: re-run it rather than edit."
                ) from None
            if not pair.image_path.is_file():
                raise DataError(
                    f"{path}: line {n} names {rec['image']}, which is missing; the split folder "
                    "is incomplete: re-run `lmforge image-validate`."
                )
            pairs.append(pair)
    return pairs


def load_image(path: Path):
    """The stored image at ``path`` as an RGB ``PIL.Image.Image`` (pixels loaded)."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return img.convert("RGB") if img.mode != "RGB" else img.copy()


def write_split(split_dir: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write ``pairs.jsonl`` of the records (the images are written by the caller)."""
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / IMAGES_DIR).mkdir(exist_ok=True)
    n = 0
    with (split_dir / PAIRS_FILE).open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def image_name(image_id: str) -> str:
    return f"{IMAGES_DIR}/{image_id}.png"
