"""Processes lmforge starts end with it: on Ctrl-C, SIGTERM, SIGHUP, an error or a normal exit.

A server lmforge starts (``mlflow server`` for ``lmforge ui``, ``mlflow models serve`` for
``lmforge serve``) runs in its own process group, so a signal meant for lmforge does not reach it
half-way, and stopping the group stops its workers too. Stopping is SIGTERM to the group and to
every descendant seen (some start sessions of their own), then SIGKILL to what is left after
``grace_s``: the whole stop is bounded. psutil tells a live descendant from a reused PID.

:func:`signals_interrupt` turns SIGTERM and SIGHUP into ``KeyboardInterrupt`` (as Ctrl-C is)
from the moment it is entered, so that a signal during a download or a readiness wait unwinds
through the same ``finally`` blocks; :func:`signals_deferred` holds those signals back while a
child is being started and recorded, so none can arrive between the two.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

STOP_GRACE_S = 4.0  # SIGTERM, then SIGKILL: a stop takes at most twice this
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt in the block (the default would end Python at
    once, leaving children and temporary folders behind); only the main thread can set them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _holding(replay: bool) -> Iterator[None]:
    """Stop signals that arrive in the block are held; when it ends they are raised again
    (``replay``) or dropped. A handler, not a signal mask: a mask on the main thread would let
    another thread take the signal, whose Python handler would still run in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda n, f: held.append(n)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(held) if replay else ():
            if previous[sig] is not signal.SIG_IGN:
                signal.raise_signal(sig)


def signals_deferred():
    """Stop signals wait until the block has ended (then they are handled as they would have
    been): a child is started and recorded, or neither."""
    return _holding(replay=True)


def signals_ignored():
    """Stop signals are ignored in the block: a clean-up that a second Ctrl-C must not cut
    short (it is bounded: :func:`stop_group` takes at most twice ``STOP_GRACE_S``)."""
    return _holding(replay=False)


def start_group(cmd: list[str], **popen: Any) -> subprocess.Popen:
    """``cmd`` in a new session: its own process group, which a signal meant for lmforge (a
    Ctrl-C at the terminal goes to the whole foreground group) does not reach half-way."""
    return subprocess.Popen(cmd, start_new_session=True, **popen)


def _descendants(pid: int) -> list:
    import psutil

    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).children(recursive=True)
    return []


def _live(proc) -> bool:
    import psutil

    with contextlib.suppress(psutil.Error):
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    return False


def _members(pgid: int, seen: list) -> list:
    """The live processes of group ``pgid`` and those ``seen`` in it before (which may have
    started sessions of their own)."""
    import psutil

    found = {p.pid: p for p in seen}
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == pgid:
                found.setdefault(process.pid, process)
    return [p for p in found.values() if _live(p)]


def stop_group(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> int:
    """Stop ``proc``, its process group and every descendant of it: SIGTERM, then SIGKILL to
    what is left after ``grace_s``; its exit code."""
    import psutil

    seen = _descendants(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for process in _members(proc.pid, seen):
            with contextlib.suppress(psutil.Error):  # psutil checks the PID is not reused
                process.send_signal(sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _members(proc.pid, seen):
                return proc.returncode
            time.sleep(0.1)
    return proc.wait()


def run_until_stopped(cmd: list[str], **popen: Any) -> int:
    """Run ``cmd`` until it exits (its exit code) or lmforge is told to stop (0); either way
    nothing of it is left running."""
    with signals_interrupt():
        proc = None
        try:
            with signals_deferred():
                proc = start_group(cmd, **popen)
            return proc.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            if proc is not None:
                with signals_ignored():
                    stop_group(proc)
