"""Atomic, resumable checkpoints with ``torch.distributed.checkpoint`` (DCP).

Layout: ``<root>/step-00000100/`` holds DCP's shard files (one per rank; FSDP2 saves only the
local shards) and ``.metadata``, ``rng-rank<r>.safetensors`` per rank, and ``manifest.json``
(step, run fingerprint, loop state, and the size of every file). Writes go to ``.tmp-step-*``;
the manifest is written last and the folder renamed into place, so a crash mid-write leaves
the previous checkpoint as the latest complete one. A folder whose files do not match its
manifest (truncated, partly deleted) is skipped with a warning in favour of an older one.

Loading never unpickles arbitrary objects: tensors come from DCP's tensor files and safetensors,
the loop state from JSON, and DCP's pickled ``.metadata`` is read with an unpickler that admits
only DCP's own metadata classes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from lmforge.errors import TrainingError
from lmforge.train.distributed import Runtime, barrier, broadcast_object

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PREFIX = "step-"

# What DCP's metadata pickle may reference; anything else is refused before it is built.
_ALLOWED_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.distributed.checkpoint.filesystem", "_StoragePrefix"),
    ("torch", "Size"),
    ("torch", "float32"),
    ("torch", "bfloat16"),
    ("torch", "float16"),
    ("torch", "float64"),
    ("torch", "int64"),
    ("torch", "int32"),
    ("torch", "uint8"),
    ("torch", "bool"),
    ("torch", "strided"),
    ("torch", "contiguous_format"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("pathlib", "PosixPath"),  # StorageMeta.checkpoint_id
    ("pathlib", "PurePosixPath"),
    ("torch.serialization", "_get_layout"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"checkpoint metadata refers to {module}.{name}")
        return super().find_class(module, name)


class SafeFileSystemReader(dcp.FileSystemReader):
    """DCP's reader with a restricted unpickler for ``.metadata`` and no pickled values."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self.path) / ".metadata"
        try:
            metadata = _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
        except (pickle.UnpicklingError, AttributeError, EOFError) as exc:
            raise TrainingError(f"{path}: refused checkpoint metadata ({exc})") from None
        if not isinstance(metadata, Metadata):
            raise TrainingError(f"{path}: not DCP metadata")
        pickled = [k for k, v in metadata.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata)]  # fmt: skip
        if pickled:
            raise TrainingError(f"{path}: holds pickled objects ({pickled[:3]}); refusing to load")
        from torch.distributed.checkpoint.metadata import StorageMeta

        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _step_dir(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step:08d}"


def _fsync_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".part")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _files_with_sizes(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def verify(folder: Path, fingerprint: str | None = None) -> dict[str, Any] | None:
    """The manifest of a complete checkpoint folder, or None (with the reason logged)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        log.warning("skipping checkpoint %s: no readable manifest (%s)", folder, exc)
        return None
    if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
        log.warning("skipping checkpoint %s: written by a different config or data", folder)
        return None
    for rel, size in manifest.get("files", {}).items():
        path = folder / rel
        actual = path.stat().st_size if path.exists() else None
        if actual != size:
            log.warning(
                "skipping checkpoint %s: %s has %s bytes, manifest says %s (truncated write?)",
                folder, rel, actual, size,
            )  # fmt: skip
            return None
    if ".metadata" not in manifest.get("files", {}):
        log.warning("skipping checkpoint %s: no DCP metadata", folder)
        return None
    return manifest


class Checkpointer:
    """Save, find and load the checkpoints of one run under ``root``; every rank calls each method."""

    def __init__(self, root: Path, rt: Runtime, keep_last: int = 2, fingerprint: str = ""):
        self.root, self.rt, self.keep_last, self.fingerprint = (
            Path(root),
            rt,
            keep_last,
            fingerprint,
        )

    def complete(self) -> list[Path]:
        """Checkpoint folders, newest first (not yet verified)."""
        if not self.root.exists():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that verifies; rank 0 decides, every rank gets the same answer."""
        choice = None
        if self.rt.is_main:
            for folder in self.complete():
                manifest = verify(folder, self.fingerprint)
                if manifest is not None:
                    choice = (str(folder), manifest)
                    break
        choice = broadcast_object(choice)
        return None if choice is None else (Path(choice[0]), choice[1])

    def save(
        self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict
    ) -> Path:
        """Write checkpoint ``step`` atomically; drop all but the newest ``keep_last``."""
        final = _step_dir(self.root, step)
        tmp = self.root / f".tmp-{final.name}"
        if self.rt.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        barrier()
        with warnings.catch_warnings():  # one process: DCP warns that it saves without a group
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.save(_tensor_state(model, optimizer)[0], storage_writer=dcp.FileSystemWriter(tmp))
        save_file(_rng_state(), str(tmp / f"rng-rank{self.rt.rank}.safetensors"))
        barrier()
        if self.rt.is_main:
            manifest = {
                "step": step,
                "fingerprint": self.fingerprint,
                "world_size": self.rt.world_size,
                "state": state,
                "files": _files_with_sizes(tmp),
            }
            _fsync_write(tmp / MANIFEST, json.dumps(manifest, indent=1))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in self.complete()[self.keep_last :]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        return final

    def load(self, folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Restore model, optimizer and this rank's RNG from ``folder`` in place."""
        state, optim_sd = _tensor_state(model, optimizer)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, storage_reader=SafeFileSystemReader(folder))
        optim_sd["state"] = state["optim_state"]  # loaded in place; param groups from the config
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=optim_sd)
        rng_file = folder / f"rng-rank{self.rt.rank}.safetensors"
        if rng_file.exists():  # absent when the world size changed: keep the seeded state
            _set_rng_state(load_file(str(rng_file)))

    def clean_partial(self) -> None:
        """Remove ``.tmp-*`` folders a crash left behind (rank 0)."""
        if self.rt.is_main and self.root.exists():
            for p in self.root.glob(".tmp-*"):
                shutil.rmtree(p, ignore_errors=True)
        barrier()


def _tensor_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Model and optimizer tensors only: DCP stores non-tensors (the optimizer's param groups)
    as pickles, which loading would have to unpickle. The groups' hyperparameters come from the
    config and the learning rate from the step, so nothing is lost."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim_state": optim_sd["state"]}, optim_sd


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
