"""Outputs that appear whole or not at all: atomic folders, atomic JSON files, writer locks.

API::

    with atomic_output_dir(out_dir) as tmp:   # fill tmp; on success it replaces out_dir
        write_json(tmp / "metrics.json", metrics)
    write_json(path, obj)                     # tmp file + fsync + rename: old or new, never half
    write_text(path, text)                    # the same for any text (YAML, CSV)
    with owner_lock(lock_path, what, error_cls):  # one writer at a time (pid + host in the file)
        ...

A lock file is created only if absent (a hard link of a complete file, or ``O_CREAT |
O_EXCL``) and holds its owner: pid, host, boot id, process start time. A lock whose owner is
gone (same host and boot, pid dead or reused) is stale and taken over; a live one, or one held
on another host, refuses the second writer with an ``LmforgeError`` naming the folder and the
holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError

OWNER_FILE = ".lmforge-writer.json"  # inside a temporary output folder, removed before the swap


class OutputError(LmforgeError):
    """An output folder that cannot be written now (another writer holds it)."""


# ------------------------------------------------------------------------------ JSON


def write_json(path: Path, obj: Any, *, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically: a reader sees the old file or the new one.

    The text goes to a sibling temporary file, is fsynced, then renamed over ``path``. Values
    JSON cannot hold (paths, dates) are written with ``str``.
    """
    write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (sibling temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------ owners


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart), or None
    when the process does not exist or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None if Path("/proc").is_dir() else "?"  # no procfs: cannot tell, assume alive
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
    return None if fields[0] in ("Z", "X") else fields[19]


def this_owner() -> dict[str, Any]:
    """Who this process is, as lock and marker files record it."""
    pid = os.getpid()
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "started": _start_time(pid),
    }


def owner_alive(owner: dict[str, Any]) -> bool:
    """False only when the owner is certainly gone: same host and boot, and its pid is dead or
    now another process. An owner on another host may be alive: we cannot look."""
    if owner.get("host") != socket.gethostname():
        return True
    if owner.get("boot_id") and owner.get("boot_id") != _boot_id():
        return False  # the machine rebooted since
    try:
        started = _start_time(int(owner["pid"]))
    except (KeyError, TypeError, ValueError):
        return False  # not a record this module wrote
    if started is None:
        return False
    return owner.get("started") in (None, "?") or started in ("?", owner["started"])


def describe(owner: dict[str, Any]) -> str:
    return f"pid {owner.get('pid')} on host {owner.get('host')}"


def _read_owner(path: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: half written by a writer killed at once, or not ours
    return owner if isinstance(owner, dict) else {}


# ------------------------------------------------------------------------------ locks


def _try_create(path: Path, owner: dict[str, Any]) -> bool:
    """Create ``path`` holding ``owner`` unless it exists; the content is whole when the file
    appears (written to a private file first, then hard-linked: ``link`` fails like
    ``O_CREAT | O_EXCL`` if the name exists), so a reader never sees an empty lock."""
    text = json.dumps(owner)
    private = path.with_name(f"{path.name}.new-{owner['token'][:8]}")
    private.write_text(text)
    try:
        os.link(private, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: exclusive create, then write
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return True
    finally:
        private.unlink(missing_ok=True)


def _take_over_stale(path: Path, seen: dict[str, Any]) -> None:
    """Remove a stale lock, unless another process replaced it meanwhile.

    Renaming is atomic, so of two processes that both judged the lock stale only one moves it;
    if what was moved is not the stale record first read (someone took the lock in between), it
    is linked back (``link`` fails rather than overwrite a third writer's lock)."""
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _read_owner(aside) != seen:
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)


def acquire_lock(path: Path, what: str, error: type[LmforgeError] = OutputError) -> dict:
    """Create the lock file ``path`` for this process or raise ``error`` naming the holder.

    Returns the owner record written (``release_lock`` removes the file only if it still holds
    that record). ``what`` names the guarded thing in the message (e.g. "output folder X")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = {**this_owner(), "token": uuid.uuid4().hex}
    for _ in range(5):  # a few rounds: a stale lock is taken over, then created afresh
        if _try_create(path, owner):
            return owner
        holder = _read_owner(path)
        if holder is None:
            continue  # released meanwhile
        if holder and owner_alive(holder):
            raise error(
                f"{what} is being written by another run ({describe(holder)}, lock file "
                f"{path}). Wait for it to finish, or write elsewhere. If no such run exists "
                f"(it ran on another host and died), delete {path} and retry."
            )
        _take_over_stale(path, holder)
    raise error(f"{what}: could not take the lock {path} (it keeps changing hands); retry.")


def release_lock(path: Path, owner: dict) -> None:
    if _read_owner(Path(path)) == owner:
        Path(path).unlink(missing_ok=True)


@contextlib.contextmanager
def owner_lock(path: Path, what: str, error: type[LmforgeError] = OutputError) -> Iterator[dict]:
    owner = acquire_lock(path, what, error)
    try:
        yield owner
    finally:
        release_lock(path, owner)


# ------------------------------------------------------------------------------ folders


def _siblings(out_dir: Path, kind: str) -> list[Path]:
    """``.NAME.KIND-XXXXXXXX`` folders this module makes beside out_dir, oldest first: ``tmp``
    (being filled), ``new`` (filled and complete, not yet in place), ``old`` (the previous
    output, moved aside for the new one)."""
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.{kind}-[0-9a-f]{{8}}")
    found = [p for p in out_dir.parent.iterdir() if pattern.fullmatch(p.name)]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns)


def _sibling(out_dir: Path, kind: str, tag: str) -> Path:
    return out_dir.with_name(f".{out_dir.name}.{kind}-{tag}")


def _publish(out_dir: Path, new: Path, tag: str) -> None:
    """Put the complete folder ``new`` at ``out_dir``. Every point a crash can stop it at
    leaves a complete copy that ``_recover`` finishes from: ``new`` (not yet moved) or
    ``out_dir``, with the previous output under ``.old-TAG`` until the new one is in place."""
    (new / OWNER_FILE).unlink(missing_ok=True)  # the output holds only what the step wrote
    old = _sibling(out_dir, "old", tag)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(new, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _recover(out_dir: Path) -> None:
    """Finish what a killed writer left beside ``out_dir`` (under the folder's lock), never
    removing the only copy of an output: a complete ``.new-`` is published (the newest output);
    a ``.old-`` is renamed back when ``out_dir`` is missing, removed only when it is there; a
    ``.tmp-`` was never complete and is removed, unless its writer is alive (an older lmforge
    without locks: its folder is kept)."""
    for tmp in _siblings(out_dir, "tmp"):
        owner = _read_owner(tmp / OWNER_FILE)
        if not (owner and owner_alive(owner)):
            shutil.rmtree(tmp, ignore_errors=True)
    for new in _siblings(out_dir, "new"):
        tag = uuid.uuid4().hex[:8]  # a fresh tag: an .old- of the crashed swap may remain
        _publish(out_dir, new, tag)
    for old in reversed(_siblings(out_dir, "old")):  # newest first
        if not out_dir.exists():
            os.replace(old, out_dir)
        else:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``out_dir`` to fill; on success it replaces ``out_dir``.

    One writer at a time: a lock file ``.NAME.lock`` beside ``out_dir`` refuses a second
    writer with an ``OutputError``; what a killed writer left is finished first (``_recover``:
    the newest complete output ends up at ``out_dir``). On an exception the temporary folder is
    removed and ``out_dir`` (if any) stays as it was. The filled folder is renamed to
    ``.NAME.new-*`` (complete), then swapped in with two renames (``_publish``); a crash
    between them leaves no ``out_dir`` for a moment, but both copies exist and the next writer
    puts the new one in place.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = out_dir.with_name(f".{out_dir.name}.lock")
    with owner_lock(lock, f"output folder {out_dir}"):
        _recover(out_dir)
        tag = uuid.uuid4().hex[:8]
        tmp = _sibling(out_dir, "tmp", tag)
        tmp.mkdir()
        (tmp / OWNER_FILE).write_text(json.dumps(this_owner()))
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        new = _sibling(out_dir, "new", tag)
        try:
            os.replace(tmp, new)  # complete from here on: _recover would publish it
            _publish(out_dir, new, tag)
        except OSError as exc:
            old = _sibling(out_dir, "old", tag)
            if old.exists() and not out_dir.exists():
                os.replace(old, out_dir)  # put the previous output back
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(new, ignore_errors=True)
            raise OutputError(
                f"{out_dir}: could not move the new output into place ({exc}); was the folder "
                "changed by hand or by a process that does not take the lock? Rerun the step."
            ) from None
