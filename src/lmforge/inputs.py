"""The inputs stage: the files outside the repo that params.yaml points at, as DVC dependencies.

``pretrain.init_from`` (a model folder), ``finetune.base_model`` (a model folder) and
``finetune.sft_data`` (a pairs file or folder) are paths held in params, often empty, so
``dvc.yaml`` cannot list them as ``deps``: a stage's deps are fixed paths that must exist.
``fingerprint_inputs(cfg, out_dir)`` writes ``out_dir/fingerprint.json``: for each field its
resolved path and a digest of its files' contents, or null when it is unset. The ``inputs``
stage runs it on every ``dvc repro`` (``always_changed``); tokenize, pretrain and finetune
depend on the file, and DVC reruns them only when its content changed, i.e. when a path or a
file behind it did.

The digest covers every file under the path, hidden ones and symlinks' targets included
(relative path, size, blake2b of the content, sorted by path): a model folder can be GBs, so
each file is streamed (``hashlib.file_digest``), never read whole.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.errors import DataError, TrainingError
from lmforge.outputs import write_json

FILE = "fingerprint.json"
ALGORITHM = "blake2b"  # fast in pure software; 256 bits are plenty to tell contents apart


def _hasher() -> Any:
    return hashlib.blake2b(digest_size=32)


MODEL_FIELDS = ("pretrain.init_from", "finetune.base_model")


@dataclass
class InputsResult:
    fingerprint: str  # the file written
    inputs: dict[str, str | None]  # field -> digest, None when unset


def configured(cfg: Config) -> dict[str, str | None]:
    """The external path of each field, None when unset (every field is read: DVC params)."""
    return {
        "pretrain.init_from": cfg.pretrain.init_from,
        "finetune.base_model": cfg.finetune.base_model,
        "finetune.sft_data": cfg.finetune.sft_data or None,
    }


def checked(field: str, value: str) -> Path:
    """The path of ``field``, checked to exist. The step that reads it checks the rest
    (``lmforge.model.base``, ``sft_pairs``): this stage runs on every repro, and importing
    ``lmforge.model`` (transformers) would add seconds to each."""
    if field in MODEL_FIELDS:
        folder = Path(value).expanduser()
        if not folder.is_dir():
            raise TrainingError(  # as lmforge.model.base.base_dir words it
                f"{field}: {folder} is not a folder; set {field} to a folder written by "
                "save_pretrained (config.json, weights, tokenizer)"
            )
        return folder.resolve()
    from lmforge.data.sft_pairs import pairs_source

    return pairs_source(value).resolve()


def _files(folder: Path, chain: tuple[str, ...] = ()) -> list[Path]:
    """Every file under ``folder``, symlinks followed; a loop or a special file is an error
    (skipping it would leave changes behind it unseen)."""
    real = os.path.realpath(folder)
    if real in chain:
        raise DataError(f"{folder}: a symlink loop (it leads back to {real}); remove the link")
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir():
                found += _files(path, (*chain, real))
            elif entry.is_file():
                found.append(path)
            else:
                raise DataError(
                    f"{path}: not a regular file (a broken symlink, a socket or a pipe); "
                    "remove it or replace it with the file it stands for"
                )
    return found


def _file_digest(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, _hasher).hexdigest()


def digest(path: Path, field: str) -> dict[str, Any]:
    """``{"digest", "files", "bytes"}`` of a file or of every file under a folder."""
    if path.is_file():
        rows = [(path.name, path)]
    else:
        rows = sorted((p.relative_to(path).as_posix(), p) for p in _files(path))
    total = _hasher()
    size_sum = 0
    for rel, file in rows:
        try:
            size = file.stat().st_size
            line = f"{rel}\t{size}\t{_file_digest(file)}\n"
        except OSError as exc:
            raise DataError(
                f"{field}: cannot read {file} ({exc.strerror}); fix its permissions"
            ) from None
        total.update(line.encode())
        size_sum += size
    return {"digest": f"{ALGORITHM}:{total.hexdigest()}", "files": len(rows), "bytes": size_sum}


def fingerprint_inputs(cfg: Config, out_dir: Path) -> InputsResult:
    """Write ``out_dir/fingerprint.json`` (module doc); a path that is set but unusable stops
    the stage with the error of the step that reads it."""
    entries: dict[str, dict[str, Any] | None] = {}
    done: dict[Path, dict[str, Any]] = {}  # init_from and base_model may be the same folder
    for field, value in configured(cfg).items():
        if value is None:
            entries[field] = None
            continue
        path = checked(field, value)
        if path not in done:
            done[path] = digest(path, field)
        entries[field] = {"path": str(path), **done[path]}
    target = Path(out_dir) / FILE
    write_json(target, {"inputs": entries})
    return InputsResult(
        fingerprint=str(target),
        inputs={field: entry and entry["digest"] for field, entry in entries.items()},
    )
