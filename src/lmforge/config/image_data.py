"""Config of the image-text data stages (``multimodal.data``): where the captioned images are,
what validation accepts, how the stored copies are sized and split, and the seeded augmentation.

Read by lmforge.data.images (validate, augment) and, for the stored layout, by the multimodal
model stages; ``MultimodalConfig.data`` holds one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmforge.config.data import check_split_shares
from lmforge.config.schema import Section, setting

CaptionsFormat = Literal["auto", "jsonl", "csv", "parquet", "arrow"]
# Pillow modes whose pixels convert to RGB without a colour guess (CMYK without its ICC profile
# and 16-bit or float greyscale have no single right conversion: refused unless listed).
DEFAULT_MODES = ["RGB", "RGBA", "L", "LA", "P", "PA"]


@dataclass
class ImageDataConfig(Section):
    """Captioned images (under the DVC-tracked ``data/``): reading, validation bounds, the
    stored size, the split by image hash and the augmentation of the training split."""

    name = "multimodal.data"

    captions_file: str = setting(
        "images/stamps",
        "Under data/: the captions file naming each image (JSON lines, CSV or Parquet: one row "
        "per image), or a folder written by Dataset.save_to_disk whose image column is an "
        "Image feature (the shipped Tux Paint stamps are one).",
    )
    captions_format: CaptionsFormat = setting(
        "auto",
        "How multimodal.data.captions_file is read: auto (from the extension: .jsonl/.ndjson, "
        ".csv, .parquet; a folder is a save_to_disk dataset), or jsonl, csv, parquet, arrow.",
    )
    images_dir: str = setting(
        "",
        "Under data/: the folder the image field's relative paths start from; empty: the "
        "captions file's own folder. Unused for a save_to_disk dataset (images are inside).",
    )
    image_field: str = setting(
        "image", "The field (column) naming a row's image file, or holding it (arrow)."
    )
    caption_field: str = setting("caption", "The field (column) holding a row's caption.")
    flip_field: str = setting(
        "flip_ok",
        "Optional field: a row whose value is false is never flipped by the augmentation (the "
        "shipped stamps carry Tux Paint's own 'nomirror' flag); absent: the caption decides.",
    )
    min_side: int = setting(
        4, "Smallest width or height accepted, in pixels (smaller is refused).", ge=1
    )
    max_side: int = setting(
        8192, "Largest width or height accepted, in pixels (larger is refused).", ge=1
    )
    max_aspect: float = setting(
        8.0, "Largest ratio of the longer side to the shorter accepted.", ge=1
    )
    max_file_mb: float = setting(
        32.0, "Larger image files are refused before decoding (decompression bombs).", gt=0
    )
    allowed_modes: list[str] = setting(
        list(DEFAULT_MODES),
        "Pillow modes accepted (all are stored as RGB; transparency is laid on white). Not "
        "listed by default, so refused: CMYK (no colour profile to convert by), I;16 and I "
        "(16/32-bit), F (float), 1 (bilevel), YCbCr, LAB, HSV.",
    )
    min_caption_chars: int = setting(
        1, "Shortest caption accepted, in characters after stripping whitespace.", ge=1
    )
    max_caption_chars: int = setting(1000, "Longest caption accepted, in characters.", ge=1)
    duplicates: Literal["remove", "refuse"] = setting(
        "remove",
        "Images with the same pixels (sha256 of the decoded RGB pixels and size) under several "
        "names or rows: remove keeps the first in input order and counts the others in "
        "report.json; refuse stops, naming both.",
    )
    pii: Literal["mask", "drop", "keep"] = setting(
        "mask",
        "Personal data in captions (as data.pii): mask replaces each match by a typed "
        "placeholder, drop removes the pair, keep leaves it (the report says so).",
    )
    pii_allow: list[str] = setting(
        [], "Matches never masked in captions (as data.pii_allow: exact values or @domain)."
    )
    resize_to: int = setting(
        32,
        "Side of the stored square images, in pixels: the image is padded to a square "
        "(multimodal.data.fit: pad) or centre-cropped (crop), then resized (Lanczos).",
        ge=4,
        le=4096,
    )
    fit: Literal["pad", "crop"] = setting(
        "pad",
        "How a non-square image becomes square: pad (white borders; the whole picture stays, "
        "so the caption stays true) or crop (centre square).",
    )
    split_salt: str = setting(
        "lmforge-images-v1",
        "Salt of the hash of the image's pixels that assigns it its split (one image, one split).",
    )
    validation_share: float = setting(
        0.1, "Share of images (by pixel hash) in the validation split.", gt=0, lt=1
    )
    test_share: float = setting(
        0.1, "Share of images (by pixel hash) in the test split.", gt=0, lt=1
    )
    failed_examples: int = setting(
        3, "Offending files or rows quoted per failed check.", ge=0, le=100
    )
    augment_seed: int = setting(
        1234, "Seed of the image augmentation; the same seed gives the same copies."
    )
    augment_copies: int = setting(
        1, "Augmented copies made of each training image (0: none, the split copied).", ge=0
    )
    crop_scale_min: float = setting(
        0.6,
        "Random resized crop: least share of the image's area the crop keeps (1: no crop).",
        gt=0,
        le=1,
    )
    crop_ratio_max: float = setting(
        1.33,
        "Random resized crop: largest aspect ratio of the crop (and 1/this the smallest).",
        ge=1,
    )
    flip_p: float = setting(
        0.5,
        "Probability of a horizontal flip, for captions where a flip keeps them true.",
        ge=0,
        le=1,
    )
    flip_unsafe_words: list[str] = setting(
        [
            "left",
            "right",
            "text",
            "word",
            "words",
            "letter",
            "letters",
            "sign",
            "says",
            "written",
            "reads",
            "number",
            "clock",
            "alphabet",
        ],
        "A caption with any of these words (case-insensitive), a digit or a quotation is "
        "never flipped: a mirror image would make it false (sides, lettering).",
    )
    jitter_brightness: float = setting(
        0.2, "Colour jitter: brightness factor drawn from [1-this, 1+this].", ge=0, lt=1
    )
    jitter_contrast: float = setting(
        0.2, "Colour jitter: contrast factor drawn from [1-this, 1+this].", ge=0, lt=1
    )
    jitter_saturation: float = setting(
        0.2, "Colour jitter: saturation factor drawn from [1-this, 1+this].", ge=0, lt=1
    )
    augment_captions: bool = setting(
        False,
        "Also apply the text augmentation (section augment, EDA-style) to the copies' "
        "captions; off by default: a caption's exact words are what alignment learns.",
    )

    def check(self) -> None:
        check_split_shares(self)
        if self.min_side > self.max_side:
            self.fail("min_side", f"{self.min_side} exceeds multimodal.data.max_side")
        if self.min_caption_chars > self.max_caption_chars:
            self.fail(
                "min_caption_chars",
                f"{self.min_caption_chars} exceeds multimodal.data.max_caption_chars",
            )
        if not self.allowed_modes:
            self.fail("allowed_modes", "list at least one Pillow mode (for example RGB)")
        if not self.image_field or not self.caption_field:
            self.fail("image_field", "image_field and caption_field must name a field")
