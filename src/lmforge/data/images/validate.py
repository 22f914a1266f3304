"""The ``image-validate`` step: check every captioned image, store clean copies, split by image.

Each row of the captions file (``sources``) is checked by lmforge's own rules: the image file
exists and decodes, its mode and size are within ``multimodal.data``, its caption is text of
the allowed length. Any refused row stops the step with one paragraph naming each offending
file and row; nothing is written. Images with the same pixels (under other names or rows) are
removed and counted (``duplicates: remove``, the default: keep the first in input order) or
refused (``refuse``). Captions are masked for personal data as text is (``lmforge.data.pii``),
every stored image is rebuilt from its pixels (no EXIF, GPS, serial, ICC, XMP: counted),
resized to ``resize_to``, and assigned its split by a hash of the stored image, so an image
(and any copy of it) is in one split only. Great Expectations then checks the caption table
that is about to be written; only if it passes does the temporary folder become ``out_dir``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config.image_data import ImageDataConfig
from lmforge.data.images import sources
from lmforge.data.images.pairs import SPLITS, image_name, write_split
from lmforge.data.images.store import Refused, Stored, stored_copy
from lmforge.data.pii import Allow, find, replace
from lmforge.data.split import hash_unit, split_code
from lmforge.errors import DataError
from lmforge.outputs import atomic_output_dir, write_json


@dataclass
class ImageValidationResult:
    pairs: dict[str, int]  # split -> pairs written
    duplicates: int  # rows removed as repeats of an earlier image
    metadata_stripped: int  # stored images whose original carried metadata
    out_dir: str


class _Run:
    """What one pass over the rows found: kept records, refusals, duplicates, counts."""

    def __init__(self, cfg: ImageDataConfig, tmp: Path):
        self.cfg, self.tmp = cfg, tmp  # tmp: the output being filled (gone on any refusal)
        self.allow = Allow(cfg.pii_allow)
        self.kept: list[dict[str, Any]] = []
        self.refused: dict[str, list[str]] = {}  # reason -> "image at where: detail"
        self.by_pixels: dict[str, str] = {}  # pixel hash -> first row's "image at where"
        self.by_id: dict[str, str] = {}  # stored id -> the same
        self.duplicates: list[str] = []
        self.same_after_resize = 0
        self.metadata: Counter = Counter()
        self.pii: Counter = Counter()
        self.pii_dropped = 0

    def refuse(self, reason: str, raw: sources.RawPair, detail: str) -> None:
        self.refused.setdefault(reason, []).append(f"{raw.image!r} at {raw.where}: {detail}")

    def row(self, raw: sources.RawPair) -> None:
        caption = self._caption(raw)
        stored = self._stored(raw)
        if caption is None or stored is None or self._repeat(raw, stored):
            return
        if stored.metadata:
            self.metadata["images"] += 1
            self.metadata.update(stored.metadata)
        matches = find(caption, self.allow)
        self.pii.update(m.kind for m in matches)
        if matches and self.cfg.pii == "drop":
            self.pii_dropped += 1
            return
        if matches and self.cfg.pii == "mask":
            caption = replace(caption, matches)
        u = hash_unit(stored.id, self.cfg.split_salt)
        split = SPLITS[split_code(u, self.cfg.validation_share, self.cfg.test_share)]
        if not self.refused:  # written at once (memory stays small); discarded on a refusal
            path = self.tmp / split / image_name(stored.id)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(stored.png)
        self.kept.append(
            {
                "split": split,
                "record": {
                    "id": stored.id,
                    "image": image_name(stored.id),
                    "caption": caption,
                    "source": raw.source,
                    "original": raw.image,
                    **({} if raw.flip_ok else {"flip_ok": False}),
                },
                "profile": {
                    "id": stored.id,
                    "file": raw.file,
                    "line": raw.n,
                    "caption": caption,
                    "n_chars": len(caption),
                    "pii_left": len(find(caption, self.allow)) if self.cfg.pii == "mask" else 0,
                    "width": stored.width,
                    "height": stored.height,
                    "split": split,
                },
            }
        )

    def _caption(self, raw: sources.RawPair) -> str | None:
        cap = raw.caption
        if not isinstance(cap, str):
            self.refuse("caption is not text", raw, f"{type(cap).__name__} {cap!r}")
            return None
        cap = " ".join(cap.split())  # one line: a caption is a sentence, not a layout
        lo, hi = self.cfg.min_caption_chars, self.cfg.max_caption_chars
        if not lo <= len(cap) <= hi:
            reason = "empty caption" if not cap else "caption length out of bounds"
            self.refuse(reason, raw, f"{len(cap)} characters, allowed {lo}..{hi}")
            return None
        return cap

    def _stored(self, raw: sources.RawPair) -> Stored | None:
        if raw.read is None:
            self.refuse("no image named", raw, f"field {self.cfg.image_field!r} is empty")
            return None
        try:
            data = raw.read()
        except OSError as exc:
            self.refuse("image file missing", raw, exc.strerror or str(exc))
            return None
        try:
            return stored_copy(data, self.cfg)
        except Refused as exc:
            self.refuse(exc.reason, raw, str(exc))
            return None

    def _repeat(self, raw: sources.RawPair, stored: Stored) -> bool:
        here = f"{raw.image!r} at {raw.where}"
        first = self.by_pixels.get(stored.pixel_hash) or self.by_id.get(stored.id)
        if first is None:
            self.by_pixels[stored.pixel_hash] = self.by_id[stored.id] = here
            return False
        if stored.pixel_hash not in self.by_pixels:
            self.same_after_resize += 1  # other pixels, the same stored copy: one image
        if self.cfg.duplicates == "refuse":
            self.refuse("duplicate image", raw, f"the same image as {first}")
        self.duplicates.append(f"{here} repeats {first}")
        return True


def _refusal(run: _Run, data_dir: Path, rows: int) -> DataError:
    n = sum(len(v) for v in run.refused.values())
    parts = []
    for reason, items in run.refused.items():
        shown = "; ".join(items[: max(1, run.cfg.failed_examples)])
        more = (
            f" (and {len(items) - run.cfg.failed_examples} more)"
            if len(items) > max(1, run.cfg.failed_examples)
            else ""
        )
        parts.append(f"{reason} for {len(items)} row(s): {shown}{more}")
    return DataError(
        f"{data_dir}: {n} of {rows} image-caption rows refused, nothing was written. "
        + ". ".join(parts)
        + ". Fix or remove those rows (or change the bounds in the `multimodal.data` section "
        "of params.yaml) and re-run."
    )


def validate_images(cfg: ImageDataConfig, data_dir: Path, out_dir: Path) -> ImageValidationResult:
    """Check the captioned images under ``data_dir``; write the splits and report to ``out_dir``."""
    from lmforge.data.images.checks import run_caption_suite

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    sources.captions_path(cfg, data_dir)  # a wrong path or format before the output is touched
    counts = {split: 0 for split in SPLITS}
    with atomic_output_dir(out_dir) as tmp:
        run, rows = _Run(cfg, tmp), 0
        for raw in sources.read(cfg, data_dir):
            rows += 1
            run.row(raw)
        if run.refused:
            raise _refusal(run, data_dir, rows)
        expectations = run_caption_suite(cfg, [k["profile"] for k in run.kept], str(data_dir))
        for split in SPLITS:
            mine = [k["record"] for k in run.kept if k["split"] == split]
            counts[split] = write_split(tmp / split, mine)
        report = _report(cfg, run, rows, counts, expectations, data_dir)
        write_json(tmp / "report.json", report)
        write_json(tmp / "metrics.json", metrics_of(report))
    return ImageValidationResult(
        pairs=counts,
        duplicates=len(run.duplicates),
        metadata_stripped=run.metadata["images"],
        out_dir=str(out_dir),
    )


def _report(cfg, run: _Run, rows: int, counts, expectations, data_dir: Path) -> dict[str, Any]:
    n = cfg.failed_examples
    return {
        "stage": "image-validate",
        "success": True,
        "data_dir": str(data_dir),
        "captions_file": cfg.captions_file,
        "rows": rows,
        "pairs": len(run.kept),
        "splits": counts,
        "resize_to": cfg.resize_to,
        "duplicates": {
            "policy": cfg.duplicates,
            "removed": len(run.duplicates),
            "same_after_resize": run.same_after_resize,
            "examples": run.duplicates[:n],
        },
        "metadata_stripped": {"images": run.metadata["images"], **dict(run.metadata)},
        "pii": {
            "mode": cfg.pii,
            "found": dict(run.pii),
            "total": sum(run.pii.values()),
            "dropped": run.pii_dropped,
        },
        "expectations": expectations,
    }


def metrics_of(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers of ``report`` (DVC metrics, MLflow): flat-ish, numbers only."""
    meta = {k: v for k, v in report["metadata_stripped"].items()}
    return {
        "rows": report["rows"],
        "pairs": report["pairs"],
        **{f"{split}_pairs": n for split, n in report["splits"].items()},
        "duplicates_removed": report["duplicates"]["removed"],
        "metadata_stripped": meta,
        "pii": {**report["pii"]["found"], "dropped": report["pii"]["dropped"]},
        "expectations": report["expectations"]["evaluated"],
        "expectations_failed": report["expectations"]["failed"],
    }
