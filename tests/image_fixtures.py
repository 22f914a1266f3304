"""Small captioned-image folders for the image-data tests, made with Pillow in a temp folder."""

from __future__ import annotations

import io
import json
from pathlib import Path

GPS_IFD, EXIF_IFD = 0x8825, 0x8769


def png(path: Path, size=(40, 30), color="red", mode="RGB") -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def jpeg_with_gps(path: Path, size=(40, 30), color=(10, 200, 30)) -> Path:
    """A JPEG whose EXIF has a GPS position, a camera serial number and a camera make."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F] = "ACME Cameras"
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (51.0, 30.0, 12.5), 3: "W", 4: (0.0, 7.0, 40.0)})
    exif.get_ifd(EXIF_IFD)[0xA431] = "SERIAL-12345"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    return path


def pattern(size=(40, 30), seed=0):
    """An image with left/right structure (so a flip or a crop changes it)."""
    from PIL import Image

    img = Image.new("RGB", size, (seed * 40 % 256, 90, 160))
    for x in range(size[0] // 3):
        for y in range(size[1]):
            img.putpixel((x, y), (250, (x * 7 + seed * 13) % 256, y * 5 % 256))
    return img


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A small PNG whose header claims ``width`` x ``height`` (a decompression bomb's shape):
    the IHDR chunk rewritten with its CRC, so only decoding the pixels would fail."""
    import struct
    import zlib

    data = bytearray(png(path, size=(4, 4)).read_bytes())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    path.write_bytes(bytes(data))
    return path


def write_captions(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def good_folder(root: Path, n: int = 12) -> Path:
    """``root/imgs``: n distinct patterned PNGs with captions (names with spaces, ``::``,
    non-ASCII), one repeated under another name, one JPEG with GPS EXIF, one palette image."""
    imgs = root / "imgs"
    imgs.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = [f"pic {i}.png", f"a::b {i}.png", f"café ñ {i}.png"][i % 3]
        pattern(seed=i).save(imgs / name)
        rows.append({"image": name, "caption": f"A striped tile number {i} facing left."})
    (imgs / "copy of 0.png").write_bytes((imgs / "pic 0.png").read_bytes())
    rows.append({"image": "copy of 0.png", "caption": "The same tile again."})
    jpeg_with_gps(imgs / "gps.jpg")
    rows.append({"image": "gps.jpg", "caption": "A green field, call +44 20 7946 0958."})
    buf = io.BytesIO()
    pattern(seed=99).convert("P").save(buf, format="PNG")
    (imgs / "palette.png").write_bytes(buf.getvalue())
    rows.append({"image": "palette.png", "caption": "A palette picture of a dog."})
    write_captions(imgs / "captions.jsonl", rows)
    return root
