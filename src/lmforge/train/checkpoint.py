"""Atomic, verified, resumable checkpoints with ``torch.distributed.checkpoint`` (DCP).

Layout: ``<root>/step-00000100/`` holds DCP's shard files (one per rank; FSDP2 saves only the
local shards) and ``.metadata``, ``rng-rank<r>.safetensors`` per rank, and ``manifest.json``
(step, run fingerprint, loop state, and the size and sha256 of every file). Writes go to
``.tmp-step-*``; the files are hashed (each rank a share of them), the manifest is written last
and the folder renamed into place, so a crash mid-write leaves the previous checkpoint as the
latest complete one. A folder whose files do not match its manifest (truncated, overwritten,
partly deleted) is skipped with a warning naming it, in favour of an older one.

One folder, many runs: a run whose fingerprint (``lmforge.train.step.fingerprint``: model
shape, data, seed, optimizer) differs from the checkpoints already in ``<root>`` keeps its own
in ``<root>/run-<fingerprint>/`` and never touches theirs; ``<root>`` itself belongs to the
first run that wrote there (so a folder of one run looks as it always did). A run resumes from
the newest checkpoint of its fingerprint in either place.

Nothing is deleted that is the last copy of a checkpoint. Replacing a step that exists (a run
that resumed from an earlier one writes it again) is: rename the old folder to ``.old-NAME``,
rename ``.tmp-NAME`` to ``NAME``, remove ``.old-NAME``. ``prepare`` (the next writer, under the
lock) finishes whatever a crash interrupted: a ``.tmp-`` that verifies is the newest copy and is
moved into place (the old one aside first); a ``.old-`` whose name is free is renamed back; a
``.old-`` goes only once its name holds a checkpoint that verifies; a ``.tmp-`` that does not
verify was cut short before its manifest and is removed. A checkpoint of another fingerprint at
the same step is moved into that run's own folder, not replaced.

One run writes a checkpoint folder at a time: ``writer_lock`` (a lock file holding the
writer's pid and host) refuses a second. Pruning keeps the newest ``keep_last`` verified
checkpoints of this run's fingerprint, always including the one just written; checkpoints of
other configs (or that fail verification) are neither counted nor deleted.

Loading never unpickles arbitrary objects: tensors come from DCP's tensor files and safetensors,
the loop state from JSON, and DCP's pickled ``.metadata`` is read with an unpickler that admits
only DCP's own metadata classes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import warnings
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from lmforge.errors import TrainingError
from lmforge.outputs import acquire_lock, release_lock, write_json
from lmforge.train.distributed import Runtime, barrier, broadcast_object

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PREFIX = "step-"
LOCK = ".writer.lock"
RUN_PREFIX = "run-"

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
        pickled = [
            k
            for k, v in metadata.state_dict_metadata.items()
            if isinstance(v, BytesStorageMetadata)
        ]
        if pickled:
            raise TrainingError(f"{path}: holds pickled objects ({pickled[:3]}); refusing to load")
        from torch.distributed.checkpoint.metadata import StorageMeta

        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _step_dir(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step:08d}"


def run_dir(home: Path, fingerprint: str) -> Path:
    """Where a run keeps its checkpoints when ``home`` holds another run's."""
    return Path(home) / f"{RUN_PREFIX}{fingerprint or 'unnamed'}"


def sha256_of(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _data_files(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST
    )


def _hash_files(folder: Path, rt: Runtime) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file in ``folder``; rank r hashes every world_size-th file, so
    the cost is shared like the writing was. Every rank calls it; rank 0 gets the whole map."""
    files = _data_files(folder)
    mine = {
        rel: {"size": (folder / rel).stat().st_size, "sha256": sha256_of(folder / rel)}
        for rel in files[rt.rank :: rt.world_size]
    }
    if not torch.distributed.is_initialized():
        return mine
    parts: list[Any] = [None] * rt.world_size
    torch.distributed.all_gather_object(parts, mine)
    return {rel: entry for part in parts for rel, entry in part.items()}


Status = Literal["good", "foreign", "bad"]


def _accepted(fingerprint: str | Collection[str] | None) -> frozenset[str] | None:
    """The fingerprints a run accepts as its own: its own and, for a ``step.Fingerprint``, the
    one older lmforge computed for the same config."""
    if fingerprint is None:
        return None
    if isinstance(fingerprint, str):
        legacy = getattr(fingerprint, "legacy", "")
        return frozenset({str(fingerprint), legacy} if legacy else {str(fingerprint)})
    return frozenset(fingerprint)


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return manifest if isinstance(manifest, dict) else None
    except (OSError, ValueError):
        return None


def _inspect(
    folder: Path, fingerprint: str | Collection[str] | None, hashes: bool = True
) -> tuple[Status, dict[str, Any] | None, str]:
    """Whether ``folder`` is a complete checkpoint of ``fingerprint`` (any, if None; a set: any
    of them): the status, the manifest when readable, and the reason when not good."""
    accepted = _accepted(fingerprint)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        int(manifest["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return "bad", None, f"no readable manifest ({exc})"
    if accepted is not None and manifest.get("fingerprint") not in accepted:
        return "foreign", manifest, "written by a different config or data"
    if ".metadata" not in files:
        return "bad", manifest, "no DCP metadata"
    if any(not isinstance(e, dict) or "sha256" not in e for e in files.values()):
        return "bad", manifest, "manifest without checksums (written by an older lmforge)"
    for rel, entry in files.items():
        path = folder / rel
        actual = path.stat().st_size if path.exists() else None
        if actual != entry["size"]:
            why = f"{rel} has {actual} bytes, manifest says {entry['size']} (truncated write?)"
            return "bad", manifest, why
    if hashes:
        for rel, entry in files.items():
            if sha256_of(folder / rel) != entry["sha256"]:
                return "bad", manifest, f"{rel} does not match its sha256 (overwritten on disk?)"
    return "good", manifest, ""


def verify(folder: Path, fingerprint: str | Collection[str] | None = None) -> dict | None:
    """The manifest of a complete, uncorrupted checkpoint folder, or None (reason logged)."""
    status, manifest, reason = _inspect(folder, fingerprint)
    if status != "good":
        log.warning("skipping checkpoint %s: %s", folder, reason)
        return None
    return manifest


def _complete(folder: Path) -> dict[str, Any] | None:
    """The manifest of ``folder`` if it is a complete checkpoint of any run, else None."""
    status, manifest, _ = _inspect(folder, None)
    return manifest if status == "good" else None


def _signature(folder: Path) -> tuple:
    """What changes when any file of a folder is rewritten (size or modification time)."""
    return tuple(
        (str(p.relative_to(folder)), st.st_size, st.st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and (st := p.stat())
    )


# ------------------------------------------------------------------------------ replacing


def _move_to_its_run(final: Path, manifest: dict[str, Any]) -> None:
    """Move another run's checkpoint out of the way, into that run's own folder (which its
    run searches too): renamed, never deleted."""
    target = run_dir(final.parent, str(manifest.get("fingerprint", ""))) / final.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # that run holds the step there too: keep both, under a free name
        target = _free_name(target, ".moved")
    log.warning("moving %s, a checkpoint of another run, to %s (kept, not replaced)", final, target)
    os.replace(final, target)


def _free_name(path: Path, tag: str) -> Path:
    n = 1
    while (candidate := path.with_name(f"{path.name}{tag}{n}")).exists():
        n += 1
    return candidate


def replace_folder(final: Path, tmp: Path, accepted: Collection[str]) -> None:
    """Put the complete folder ``tmp`` at ``final`` so that a crash at any point leaves a
    complete copy that ``recover`` finds: old aside, new into place, old removed. A folder of
    a fingerprint not in ``accepted`` at ``final`` is moved to its run's folder instead."""
    if final.exists():
        status, manifest, _ = _inspect(final, accepted, hashes=False)
        if status == "foreign" and manifest is not None:
            _move_to_its_run(final, manifest)
    if not final.exists():
        os.replace(tmp, final)
        return
    aside = final.with_name(f".old-{final.name}")
    if aside.exists():  # kept by recover() beside a final that did not verify
        aside = _free_name(aside, ".")
    os.replace(final, aside)
    os.replace(tmp, final)
    shutil.rmtree(aside)


def recover(root: Path) -> None:
    """Finish the replaces a crash interrupted in ``root`` (rank 0, under the writer lock:
    nobody else is writing). Never deletes the only complete copy of a checkpoint."""
    if not root.is_dir():
        return
    for tmp in sorted(root.glob(".tmp-*")):
        final = root / tmp.name.removeprefix(".tmp-")
        manifest = _complete(tmp)
        if manifest is None:
            log.warning("removing %s: a checkpoint cut short before its manifest", tmp)
            shutil.rmtree(tmp)
        elif not final.exists():
            log.warning("completing the interrupted save of %s", final)
            os.replace(tmp, final)  # the crash fell before or between the two renames
        else:
            log.warning("completing the interrupted save of %s", final)
            replace_folder(final, tmp, {str(manifest.get("fingerprint", ""))})
    for aside in sorted(root.glob(".old-*")):
        final = root / aside.name.removeprefix(".old-").split(".")[0]
        if not final.exists():
            log.warning("restoring %s: its replacement never arrived", final)
            os.replace(aside, final)
        elif _complete(final) is not None:
            shutil.rmtree(aside)  # superseded by the complete copy in place
        else:
            log.warning("keeping %s: %s does not verify", aside, final)


# ------------------------------------------------------------------------------ the lock


@contextlib.contextmanager
def writer_lock(root: Path, rt: Runtime) -> Iterator[None]:
    """Hold ``root``'s lock file for this run (rank 0 takes it; every rank calls this).

    A second run writing the same folder gets a ``TrainingError`` naming the folder and the
    holder, on every rank; a lock left by a run that died on this host is taken over."""
    root, owner, error = Path(root), None, None
    if rt.is_main:
        try:
            owner = acquire_lock(root / LOCK, f"checkpoint folder {root}", TrainingError)
        except TrainingError as exc:
            error = str(exc)
    error = broadcast_object(error)
    if error is not None:
        raise TrainingError(error)
    try:
        yield
    finally:
        if owner is not None:
            release_lock(root / LOCK, owner)


class Checkpointer:
    """Save, find and load the checkpoints of one run under ``root``; every rank calls each.

    ``prepare()`` first: it recovers interrupted replaces and picks the run's folder
    (``.folder``: ``root`` or ``root/run-<fingerprint>``, see the module doc)."""

    def __init__(self, root: Path, rt: Runtime, keep_last: int = 2, fingerprint: str = ""):
        if keep_last < 1:  # 0 would delete the checkpoint just written
            raise TrainingError(
                f"keep_last={keep_last}: at least the newest checkpoint must be kept; set "
                "keep_last >= 1 (or ckpt_every=0 to write no checkpoints)."
            )
        self.home, self.rt, self.keep_last = Path(root), rt, keep_last
        self.fingerprint = fingerprint
        self.accepted = _accepted(fingerprint) or frozenset()
        self.folder = self.home
        self.others = 0  # checkpoints of other runs in ``home`` (why ``folder`` may differ)
        self._known: dict[str, tuple[tuple, Status, int]] = {}  # path -> (signature, status, step)
        self._reported: set[str] = set()

    @property
    def root(self) -> Path:
        return self.folder

    def prepare(self) -> None:
        """Recover what a crash left (rank 0, under the lock) and choose this run's folder."""
        choice = None
        if self.rt.is_main:
            own = run_dir(self.home, self.fingerprint)
            recover(self.home)
            recover(own)
            fingerprints = [m.get("fingerprint") for m in self._manifests(self.home)]
            self.others = sum(fp not in self.accepted for fp in fingerprints)
            ours_at_home = len(fingerprints) > self.others
            if any(m.get("fingerprint") in self.accepted for m in self._manifests(own)):
                choice = (str(own), self.others)
            elif ours_at_home or not self.others:
                choice = (str(self.home), self.others)
            else:
                choice = (str(own), self.others)
        folder, self.others = broadcast_object(choice)
        self.folder = Path(folder)

    @staticmethod
    def _manifests(folder: Path) -> list[dict[str, Any]]:
        found = [_read_manifest(p) for p in _step_folders(folder)]
        return [m for m in found if m is not None]

    def complete(self) -> list[Path]:
        """This run's candidate checkpoint folders (its own folder's and ``home``'s), newest
        step first (not yet verified)."""
        places = [self.folder] if self.folder == self.home else [self.folder, self.home]
        found = [p for place in places for p in _step_folders(place)]
        return sorted(found, key=lambda p: (p.name, p.parent == self.folder), reverse=True)

    def latest(self, at_most: int | None = None) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that verifies, of step ``at_most`` or less when given (a run
        asked for fewer steps than its checkpoints hold); rank 0 decides, every rank gets the
        same answer."""
        choice = None
        if self.rt.is_main:
            for folder in self.complete():
                status, manifest, _ = _inspect(folder, self.accepted, hashes=False)
                if status == "foreign":
                    continue  # another run's: it resumes from them, this one does not look
                if at_most is not None and manifest and int(manifest["step"]) > at_most:
                    continue
                manifest = verify(folder, self.accepted)
                if manifest is not None:
                    choice = (str(folder), manifest)
                    break
        choice = broadcast_object(choice)
        return None if choice is None else (Path(choice[0]), choice[1])

    def save(
        self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict
    ) -> Path:
        """Write checkpoint ``step`` atomically; keep the newest ``keep_last`` of this run."""
        final = _step_dir(self.folder, step)
        tmp = self.folder / f".tmp-{final.name}"
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
        files = _hash_files(tmp, self.rt)
        if self.rt.is_main:
            manifest = {
                "step": step,
                "fingerprint": str(self.fingerprint),
                "world_size": self.rt.world_size,
                "state": state,
                "files": files,
            }
            write_json(tmp / MANIFEST, manifest, indent=1)
            replace_folder(final, tmp, self.accepted)
            self._known[str(final)] = (_signature(final), "good", step)
            self._prune(final)
        barrier()
        return final

    def _classify(self, folder: Path) -> tuple[Status, int]:
        """A folder's status, verified once and remembered until any of its files changes."""
        sig = _signature(folder)
        known = self._known.get(str(folder))
        if known is not None and known[0] == sig:
            return known[1], known[2]
        status, manifest, reason = _inspect(folder, self.accepted)
        step = int(manifest["step"]) if manifest else -1
        self._known[str(folder)] = (sig, status, step)
        if status != "good" and str(folder) not in self._reported:
            self._reported.add(str(folder))
            if status == "foreign":
                log.info("leaving %s alone: %s; not counted for keep_last", folder, reason)
            else:
                log.warning("leaving %s alone (not counted for keep_last): %s", folder, reason)
        return status, step

    def _prune(self, newest: Path) -> None:
        """Drop this run's verified checkpoints beyond the newest ``keep_last`` (rank 0)."""
        ours = []
        for folder in self.complete():
            if folder != newest:
                status, step = self._classify(folder)
                if status == "good":
                    ours.append((step, folder))
        ours.sort(reverse=True)
        for _, folder in ours[self.keep_last - 1 :]:
            shutil.rmtree(folder, ignore_errors=True)
            self._known.pop(str(folder), None)

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


def _step_folders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]


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
