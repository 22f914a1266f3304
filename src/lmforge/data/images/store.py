"""One image: decode it, check it against the bounds, and make the stored copy.

The stored copy is rebuilt from the pixels alone (a new RGB image, saved as PNG with no text
chunks, EXIF, XMP or ICC profile), so no metadata of the original (GPS position, camera serial,
software, comments) can reach a split; what the original carried is counted for the report.
EXIF orientation is applied first: the caption describes the picture as it is shown.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field

from lmforge.config.image_data import ImageDataConfig

_GPS_IFD, _EXIF_IFD = 0x8825, 0x8769
# Camera and lens serial numbers (EXIF 2.3 BodySerialNumber, LensSerialNumber; the DNG and
# Canon/Nikon-era CameraSerialNumber / ImageUniqueID say who or which device took it).
_SERIAL_TAGS = (0xA431, 0xA435, 0xC62F, 0xA420)
_WHITE = (255, 255, 255)


class Refused(Exception):
    """An image that validation refuses: ``reason`` (a short kind, grouping the report) and
    the message, which says why and which setting to change."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Stored:
    png: bytes  # the stored copy
    id: str  # first 16 hex of sha256 of ``png``
    pixel_hash: str  # sha256 of the original's RGB pixels and size: the duplicate key
    width: int  # of the original
    height: int
    mode: str
    metadata: list[str] = field(default_factory=list)  # kinds of metadata the original had


def metadata_kinds(img) -> list[str]:
    """What the original carried beyond pixels: exif, gps, camera_serial, icc, xmp, text."""
    kinds = []
    exif = img.getexif()
    if len(exif):
        kinds.append("exif")
        if exif.get_ifd(_GPS_IFD) or _GPS_IFD in exif:
            kinds.append("gps")
        tags = {**exif, **exif.get_ifd(_EXIF_IFD)}
        if any(t in tags for t in _SERIAL_TAGS):
            kinds.append("camera_serial")
    info = img.info
    if info.get("icc_profile"):
        kinds.append("icc")
    if info.get("xmp") or info.get("XML:com.adobe.xmp"):
        kinds.append("xmp")
    text = getattr(img, "text", None) or {}
    if text or info.get("comment"):
        kinds.append("text")
    return kinds


def stored_copy(data: bytes, cfg: ImageDataConfig) -> Stored:
    """The stored copy of the image file ``data``; ``Refused`` when validation refuses it."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) > cfg.max_file_mb * 2**20:
        raise Refused(
            "file too large",
            f"file of {len(data) / 2**20:.1f} MB exceeds multimodal.data.max_file_mb "
            f"{cfg.max_file_mb}",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_size(img.size, cfg)  # from the header, before the pixels are decoded
            if img.mode not in cfg.allowed_modes:
                raise Refused(
                    "unsupported mode",
                    f"mode {img.mode} is not in multimodal.data.allowed_modes "
                    f"{cfg.allowed_modes}; convert the image to RGB (or list the mode)",
                )
            img.load()
            metadata = metadata_kinds(img)
            shown = ImageOps.exif_transpose(img)
    except Refused:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise Refused(
            "does not decode", f"does not decode as an image ({type(exc).__name__}: {exc})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Refused("decompression bomb", f"refused as a decompression bomb ({exc})") from None
    rgb = _rgb(shown)
    pixel_hash = hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()
    png = png_bytes(_resized(rgb, cfg))
    return Stored(
        png=png,
        id=hashlib.sha256(png).hexdigest()[:16],
        pixel_hash=pixel_hash,
        width=img.width,
        height=img.height,
        mode=img.mode,
        metadata=metadata,
    )


def _check_size(size: tuple[int, int], cfg: ImageDataConfig) -> None:
    w, h = size
    if min(w, h) < cfg.min_side or max(w, h) > cfg.max_side:
        raise Refused(
            "size out of bounds",
            f"size {w}x{h} is outside multimodal.data.min_side {cfg.min_side} .. max_side "
            f"{cfg.max_side}",
        )
    if max(w, h) / min(w, h) > cfg.max_aspect:
        raise Refused(
            "aspect ratio out of bounds",
            f"aspect ratio {max(w, h) / min(w, h):.1f} of {w}x{h} exceeds "
            f"multimodal.data.max_aspect {cfg.max_aspect}",
        )


def _rgb(img):
    """Pixels only, as a fresh RGB image: transparency laid on white, nothing of ``img.info``."""
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        img = Image.alpha_composite(base, rgba)
    rgb = img.convert("RGB")
    return Image.frombytes("RGB", rgb.size, rgb.tobytes())


def _resized(img, cfg: ImageDataConfig):
    from PIL import Image, ImageOps

    side = cfg.resize_to
    if cfg.fit == "crop":
        return ImageOps.fit(img, (side, side), Image.Resampling.LANCZOS)
    return ImageOps.pad(img, (side, side), Image.Resampling.LANCZOS, color=_WHITE)


def png_bytes(img) -> bytes:
    """PNG of the pixels alone (Pillow writes no metadata chunk unless given one)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
