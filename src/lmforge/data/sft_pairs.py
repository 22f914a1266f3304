"""Prompt/response pairs for instruction tuning (``finetune.task: sft``), split three ways.

- ``read_pairs(path, prompt_field, response_field)``: one file, JSON lines, CSV or Parquet, read
  through ``datasets``; a missing field names the columns the file has, an empty value its row;
- ``subject_line_pairs(labelled_dir)``: the task made from the data we ship: each email of the
  labelled splits whose first line is its subject gives "write the subject line for this body"
  -> the subject. The emails come out of validate, so personal data is already masked (as
  ``data.pii`` says); augmented copies (typos) are left out;
- ``load_pairs(cfg, augmented_dir)``: ``{split: [Pair]}`` from ``finetune.sft_data``: empty, the
  subject lines; a folder, its ``train``/``validation``/``test`` files; a file, split by a hash
  of the prompt (``finetune.sft_holdout_share`` held out, half validation, half test), so a
  pair's split never depends on file order. A user's pairs are masked for personal data here,
  as validate masks every text (``data.pii``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmforge.data.split import SPLITS, hash_unit
from lmforge.errors import DataError

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SALT = "lmforge-sft-v1"  # the split of a single pairs file
BODY_CHARS = 500  # an email body is cut here (at a space): the subject is about its start
MAX_SUBJECT_CHARS = 120
INSTRUCTION = "Write the subject line for this email."


@dataclass(frozen=True)
class Pair:
    prompt: str
    response: str


def read_pairs(path: Path, prompt_field: str, response_field: str) -> list[Pair]:
    """The pairs of one JSON lines, CSV or Parquet file (``datasets``), in file order."""
    import datasets

    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{path}: unknown pairs format {path.suffix!r}; use {', '.join(sorted(FORMATS))}"
        )
    if not path.is_file():
        raise DataError(f"{path}: no such pairs file; fix finetune.sft_data")
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="lmforge-pairs-") as cache:
        reader = {
            "json": datasets.Dataset.from_json,
            "csv": datasets.Dataset.from_csv,
            "parquet": datasets.Dataset.from_parquet,
        }[kind]
        try:
            ds = reader(str(path), cache_dir=cache, keep_in_memory=True)
        except Exception as exc:  # pyarrow and datasets raise many kinds on a broken file
            message = " ".join(str(exc).split())[:300]
            raise DataError(f"{path}: not readable as {kind} ({message})") from None
        columns = list(ds.column_names)
        for key, field in (("prompt_field", prompt_field), ("response_field", response_field)):
            if field not in columns:
                raise DataError(
                    f"{path}: no column {field!r} (finetune.{key}); the file has "
                    f"{', '.join(map(repr, columns)) or 'no columns'}: set finetune.{key} to one"
                )
        prompts, responses = ds[prompt_field], ds[response_field]
    pairs = []
    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True), 1):
        for field, value in ((prompt_field, prompt), (response_field, response)):
            if value is None or not str(value).strip():
                raise DataError(f"{path}: row {row}: column {field!r} is empty; fill or drop it")
        pairs.append(Pair(str(prompt), str(response)))
    if not pairs:
        raise DataError(f"{path}: no pairs")
    return pairs


def subject_line(text: str) -> Pair | None:
    """``text``'s subject (its first line, before a blank line) as the response to its body."""
    head, sep, body = text.partition("\n\n")
    subject, body = head.strip(), body.strip()
    if not sep or "\n" in subject or not 3 <= len(subject) <= MAX_SUBJECT_CHARS or len(body) < 20:
        return None
    if len(body) > BODY_CHARS:
        body = body[:BODY_CHARS].rsplit(" ", 1)[0]
    return Pair(f"{body}\n\n{INSTRUCTION}", subject)


def subject_line_pairs(labelled_dir: Path) -> dict[str, list[Pair]]:
    """Subject-line pairs of each labelled split (``{"id", "text", ...}`` records)."""
    out = {}
    for split in SPLITS:
        path = Path(labelled_dir) / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(f"{path}: missing labelled split; run the augment stage first")
        pairs = [p for p in map(subject_line, _original_texts(path)) if p is not None]
        if not pairs:
            raise DataError(f"{path}: no email with a subject line (first line, blank line)")
        out[split] = pairs
    return out


def _original_texts(path: Path) -> Iterator[str]:
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise DataError(f"{path}:{n}: not valid JSON") from None
            if isinstance(row, dict) and not row.get("augmented_from") and row.get("text"):
                yield str(row["text"])


def split_pairs(pairs: list[Pair], holdout_share: float) -> dict[str, list[Pair]]:
    """Train/validation/test by a hash of the prompt (the same prompt: the same split)."""
    out: dict[str, list[Pair]] = {split: [] for split in SPLITS}
    for pair in pairs:
        u = hash_unit(pair.prompt, SALT)
        split = "test" if u < holdout_share / 2 else "validation" if u < holdout_share else "train"
        out[split].append(pair)
    return out


def load_pairs(cfg, augmented_dir: Path) -> dict[str, list[Pair]]:
    """``{split: pairs}`` for ``finetune.sft_data`` (module doc); every split non-empty."""
    tcfg = cfg.finetune
    if not tcfg.sft_data:
        return subject_line_pairs(Path(augmented_dir) / "labelled")
    source = pairs_source(tcfg.sft_data)
    if source.is_dir():
        splits = {
            split: _masked(cfg, read_pairs(_split_file(source, split), *_fields(tcfg)))
            for split in SPLITS
        }
    else:  # masked before the split: the split of a prompt never depends on what was masked,
        # and prompts that differ only there are one prompt, in one split
        pairs = _masked(cfg, read_pairs(source, *_fields(tcfg)))
        splits = split_pairs(pairs, tcfg.sft_holdout_share)
    for split, pairs in splits.items():
        if not pairs:
            raise DataError(
                f"{source}: no {split} pairs; add pairs or raise finetune.sft_holdout_share"
            )
    return splits


def pairs_source(value: str) -> Path:
    """``finetune.sft_data`` checked to exist: a pairs file or a folder of split files (the
    inputs stage fingerprints it, finetune reads it)."""
    source = Path(value).expanduser()
    if not source.exists():
        raise DataError(
            f"finetune.sft_data: {source} does not exist; set it to a pairs file "
            f"({', '.join(sorted(FORMATS))}) or a folder of train/validation/test files, or to "
            "empty for the emails' subject lines"
        )
    return source


def _fields(tcfg) -> tuple[str, str]:
    return tcfg.prompt_field, tcfg.response_field


def _split_file(folder: Path, split: str) -> Path:
    found = [
        folder / f"{split}{suffix}" for suffix in FORMATS if (folder / f"{split}{suffix}").is_file()
    ]
    if len(found) != 1:
        what = "no" if not found else "more than one"
        raise DataError(
            f"{folder}: {what} {split} file (expected one of "
            f"{', '.join(split + s for s in FORMATS)}); fix finetune.sft_data"
        )
    return found[0]


def _masked(cfg, pairs: list[Pair]) -> list[Pair]:
    """Personal data in a user's pairs handled as validate handles any text (``data.pii``)."""
    from lmforge.data.pii import Allow, find, replace

    mode, allow = cfg.data.pii, Allow(cfg.data.pii_allow)
    if mode == "keep":
        return pairs
    out = []
    for pair in pairs:
        found = [find(pair.prompt, allow), find(pair.response, allow)]
        if mode == "drop" and any(found):
            continue
        out.append(Pair(replace(pair.prompt, found[0]), replace(pair.response, found[1])))
    return out


def write_pairs(path: Path, pairs: list[Pair]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for pair in pairs:
            fh.write(json.dumps({"prompt": pair.prompt, "response": pair.response}) + "\n")


def read_written(path: Path) -> list[Pair]:
    """Pairs as ``write_pairs`` wrote them (finetune's ``pairs/`` folder)."""
    if not Path(path).is_file():
        raise DataError(f"{path}: missing; run finetune with finetune.task=sft first")
    with Path(path).open() as fh:
        return [Pair(row["prompt"], row["response"]) for row in map(json.loads, fh)]
