"""The ``augment`` stage: seeded text augmentation of the training splits, provenance kept.

The operations are the EDA family (Wei & Zou, 2019) plus two that suit raw text: random deletion,
random swap, random insertion (of a word from the same line: no thesaurus needed offline),
character noise and sentence shuffling, each at its own rate from ``params.yaml``. Which records
get a copy, and what happens to it, depends only on the seed and the record id, so a run is
reproducible whatever the file order. Only ``train`` is augmented (the split happened before, by
id). A copy that leaves the per-record bounds of ``data`` is dropped (counted as rejected), and
the augmented training split is validated again by the same suites.
"""

from __future__ import annotations

import random
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import AugmentConfig, Config, DataConfig
from lmforge.data.expectations import Profile, failure_message, letter_share, run_suites
from lmforge.data.labels import LABELS_FILE, task_labels
from lmforge.data.pii import PLACEHOLDERS
from lmforge.data.records import JsonlWriters, Kind, read_records
from lmforge.data.split import SPLITS, hash_unit
from lmforge.data.track import log_outputs, tracked
from lmforge.errors import DataError
from lmforge.outputs import atomic_output_dir, write_json

OPS = ("random_deletion", "random_swap", "random_insertion", "char_noise", "sentence_shuffle")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_PLACEHOLDER = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS.values()))


@dataclass
class AugmentResult:
    records: dict[str, int]  # dataset -> training records after augmentation
    augmented: dict[str, int]  # dataset -> augmented copies added
    rejected: dict[str, int]  # dataset -> copies dropped for leaving the per-record bounds
    ops: dict[str, int]  # operation -> copies it changed
    out_dir: str


def _count(rate: float, n: int, rng: random.Random) -> int:
    """How many of ``n`` units an operation at ``rate`` touches (the fraction rounded at random)."""
    return int(rate * n + rng.random())


def random_deletion(words: list[str], p: float, rng: random.Random) -> list[str]:
    kept = [w for w in words if rng.random() >= p]
    return kept or [rng.choice(words)]


def random_swap(words: list[str], p: float, rng: random.Random) -> list[str]:
    words = list(words)
    for _ in range(_count(p, len(words), rng) if len(words) > 1 else 0):
        i, j = rng.randrange(len(words)), rng.randrange(len(words))
        words[i], words[j] = words[j], words[i]
    return words


def random_insertion(words: list[str], p: float, rng: random.Random) -> list[str]:
    words = list(words)
    for _ in range(_count(p, len(words), rng)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(words))
    return words


def char_noise(text: str, p: float, rng: random.Random) -> str:
    """Replace about ``p`` of the characters that are letters by a random letter (typos); the
    personal-data placeholders (``<|email|>``, ...) stay whole: a typo would make one a plain
    string that the tokenizer splits."""
    chars = list(text)
    kept = set()
    if "<|" in text:
        kept = {i for m in _PLACEHOLDER.finditer(text) for i in range(*m.span())}
    for i in rng.sample(range(len(chars)), min(len(chars), _count(p, len(chars), rng))):
        if chars[i].isalpha() and i not in kept:
            chars[i] = rng.choice(_LETTERS)
    return "".join(chars)


def sentence_shuffle(text: str, rng: random.Random) -> str:
    """Shuffle the sentences inside each paragraph (paragraph order kept)."""
    paragraphs = []
    for para in text.split("\n\n"):
        sentences = _SENTENCE_END.split(para)
        rng.shuffle(sentences)
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def augment_text(text: str, cfg: AugmentConfig, rng: random.Random) -> tuple[str, list[str]]:
    """One augmented copy of ``text`` and the operations that changed it."""
    applied = []

    def step(name: str, new: str) -> str:
        if new != current:
            applied.append(name)
        return new

    current = text
    if cfg.p_sentence_shuffle > 0 and rng.random() < cfg.p_sentence_shuffle:
        current = step("sentence_shuffle", sentence_shuffle(current, rng))
    for name, fn, p in (
        ("random_deletion", random_deletion, cfg.p_random_deletion),
        ("random_swap", random_swap, cfg.p_random_swap),
        ("random_insertion", random_insertion, cfg.p_random_insertion),
    ):
        if p > 0:
            lines = [
                " ".join(fn(line.split(" "), p, rng)) if line.strip() else line
                for line in current.split("\n")
            ]
            current = step(name, "\n".join(lines))
    if cfg.p_char_noise > 0:
        current = step("char_noise", char_noise(current, cfg.p_char_noise, rng))
    return current, applied


def within_bounds(text: str, bounds: DataConfig) -> bool:
    """A copy must pass the per-record bounds its source passed (inserted or noisy words can
    push a short text under ``min_alpha_share``, insertions a long one over ``max_chars``)."""
    return bounds.min_chars <= len(text) <= bounds.max_chars and (
        letter_share(text) >= bounds.min_alpha_share
    )


def augment_split(
    cfg: Config, kind: Kind, src: Path, writers: JsonlWriters, prof: Profile, ops: Counter
) -> tuple[int, int, int]:
    """Stream ``src`` (a train split) to ``writers``, each selected record followed by its copy.
    Returns (records written, copies added, copies rejected by the bounds)."""
    acfg = cfg.augment
    enabled = kind == "corpus" or acfg.augment_labelled
    n = added = rejected = 0
    for rec in read_records(src, kind):
        writers.write("train", rec)
        prof.add(rec)
        n += 1
        if (
            not enabled
            or not rec["text"]
            or hash_unit(rec["id"], f"augment-{acfg.seed}") >= acfg.share
        ):
            continue
        rng = random.Random(f"{acfg.seed}:{rec['id']}")
        text, applied = augment_text(rec["text"], acfg, rng)
        if not applied:
            continue  # an unchanged copy would only be a duplicate
        if not within_bounds(text, cfg.data):
            rejected += 1
            continue
        copy = {
            **rec,
            "id": f"{rec['id']}#aug",
            "text": text,
            "augmented_from": rec["id"],
            "ops": applied,
        }
        writers.write("train", copy)
        prof.add(copy)
        ops.update(applied)
        n += 1
        added += 1
    return n, added, rejected


def augment(cfg: Config, validated_dir: Path, out_dir: Path) -> AugmentResult:
    """Augment ``validated_dir``'s training splits into ``out_dir`` (others copied as they are)."""
    with tracked(cfg, "augment", sections=("augment",), inputs={"validated": Path(validated_dir)}):
        validated_dir = Path(validated_dir)
        kinds: list[Kind] = ["corpus", "labelled"]
        for kind in kinds:
            for split in SPLITS:
                path = validated_dir / kind / f"{split}.jsonl"
                if not path.is_file():
                    raise DataError(
                        f"{path}: missing; run the validate stage first (`dvc repro validate`)."
                    )
        labels = task_labels(cfg, validated_dir / "labelled")
        ops: Counter = Counter()
        records, added, rejected = {}, {}, {}
        with atomic_output_dir(out_dir) as tmp:
            profiles = {}
            for kind in kinds:
                dest = tmp / kind
                for split in ("validation", "test"):
                    dest.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(
                        validated_dir / kind / f"{split}.jsonl", dest / f"{split}.jsonl"
                    )
                if (validated_dir / kind / LABELS_FILE).is_file():  # the task's classes
                    shutil.copyfile(validated_dir / kind / LABELS_FILE, dest / LABELS_FILE)
                prof = Profile(kind, labels=labels if kind == "labelled" else [], bounds=cfg.data)
                src = validated_dir / kind / "train.jsonl"
                with JsonlWriters(dest, ["train"]) as writers:
                    records[kind], added[kind], rejected[kind] = augment_split(
                        cfg, kind, src, writers, prof, ops
                    )
                profiles[f"{kind}_train"] = prof
            report: dict[str, Any] = run_suites(cfg.data, profiles, stage="augment")
            if not report["success"]:
                raise DataError(failure_message(report, f"augmented {validated_dir}"))
            report["augmented"] = added
            report["rejected"] = rejected
            report["ops"] = dict(ops)
            write_json(tmp / "report.json", report)
            metrics = {
                "success": True,
                **{
                    kind: {
                        "train_records": records[kind],
                        "augmented": added[kind],
                        "rejected": rejected[kind],
                        "augmented_share": round(added[kind] / max(1, records[kind]), 4),
                    }
                    for kind in kinds
                },
                "ops": {op: ops.get(op, 0) for op in OPS},
            }
            write_json(tmp / "metrics.json", metrics)
        log_outputs(metrics, [Path(out_dir) / "report.json"])
    return AugmentResult(
        records=records, augmented=added, rejected=rejected, ops=dict(ops), out_dir=str(out_dir)
    )
