"""Every process a local runner starts, found and ended with it, and never a stranger.

A replica's main process (torchrun) starts its workers in process sessions of their own, and a
worker may start more (data loaders, compilers): signalling the replica's process group misses
them, and once torchrun is gone they are nobody's children. ``ProcessTree`` remembers each
process it has seen below a replica by pid *and* start time (``Seen``), from scans the runner
makes while the job runs and right before it stops anything, so an orphaned worker is still
known. A pid is reused once its process is gone: ``send`` signals a remembered process only if
the process now at that pid started when the remembered one did (through a pidfd on Linux, so
the check and the signal cannot be split by a reuse in between).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Seen:
    """One process as it was seen: a pid alone may name another process later."""

    pid: int
    started: float  # psutil's create_time


def seen(pid: int) -> Seen | None:
    """The process at ``pid`` now, or None if there is none."""
    try:
        return Seen(pid, psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _is(process: Seen) -> bool:
    """Whether ``process`` still runs (a zombie has ended: it only waits to be reaped)."""
    try:
        p = psutil.Process(process.pid)
        return p.create_time() == process.started and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def send(process: Seen, sig: int) -> bool:
    """Send ``sig`` to ``process`` if it is still that process; whether it was sent."""
    if not hasattr(os, "pidfd_open"):  # not Linux: check, then signal
        try:
            p = psutil.Process(process.pid)
            if p.create_time() != process.started:
                return False
            p.send_signal(sig)
            return True
        except psutil.Error:
            return False
    try:
        fd = os.pidfd_open(process.pid)
    except OSError:  # gone
        return False
    try:  # the fd pins whichever process had the pid when it was opened: is it ours?
        if psutil.Process(process.pid).create_time() != process.started:
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except (OSError, psutil.Error):
        return False
    finally:
        os.close(fd)


class ProcessTree:
    """Processes below some roots (one per replica incarnation), remembered by ``Seen``."""

    def __init__(self) -> None:
        self._root_of: dict[Seen, Seen] = {}  # every remembered process -> its root
        self._lock = threading.Lock()

    def add_root(self, pid: int) -> Seen | None:
        root = seen(pid)
        if root is not None:
            with self._lock:
                self._root_of[root] = root
        return root

    def scan(self) -> None:
        """Remember every live descendant of every remembered process that still runs."""
        children: dict[int, list[Seen]] = {}
        for p in psutil.process_iter(["ppid", "create_time"]):
            info = p.info
            if info["ppid"] is not None and info["create_time"] is not None:
                children.setdefault(info["ppid"], []).append(Seen(p.pid, info["create_time"]))
        with self._lock:
            known = dict(self._root_of)
        found: dict[Seen, Seen] = {}
        todo = [(process, root) for process, root in known.items() if _is(process)]
        while todo:
            parent, root = todo.pop()
            for child in children.get(parent.pid, []):
                if child not in known and child not in found and child.started >= parent.started:
                    found[child] = root
                    todo.append((child, root))
        with self._lock:
            self._root_of.update(found)

    def _chosen(self, roots: Collection[Seen] | None) -> list[Seen]:
        with self._lock:
            return [p for p, r in self._root_of.items() if roots is None or r in roots]

    def members(self, roots: Collection[Seen] | None = None) -> list[Seen]:
        """Remembered processes (of these roots' trees, or of all) that still run."""
        return [p for p in self._chosen(roots) if _is(p)]

    def end(
        self, roots: Collection[Seen] | None = None, grace_s: float = 5.0, kill_wait_s: float = 3.0
    ) -> None:
        """End these roots' trees (or every tree): SIGTERM, and SIGKILL whatever still runs
        after ``grace_s`` (at once if 0); processes started meanwhile are found and signalled
        too. Forgets the ended."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, kill_wait_s)):
            if sig == signal.SIGTERM and grace_s <= 0:
                continue
            deadline = time.monotonic() + wait_s
            signalled: set[Seen] = set()
            while True:
                self.scan()
                alive = self.members(roots)
                for p in alive:
                    if p not in signalled:
                        send(p, sig)
                        signalled.add(p)
                if not alive or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            if not alive:
                break
        ended = [p for p in self._chosen(roots) if not _is(p)]
        with self._lock:
            for p in ended:
                del self._root_of[p]
