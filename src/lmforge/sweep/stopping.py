"""Stopping a sweep or a scaling study on Ctrl-C or SIGTERM: within seconds, nothing left behind.

In the main process (``on_signals``) the first SIGINT or SIGTERM raises ``Interrupted``, a
``KeyboardInterrupt``, so no trial's ``except Exception`` takes it for the trial's own failure;
later signals are ignored while the sweep cleans up. A result that must not be cut in half (a
trial's value going to Optuna and MLflow) is written inside ``deferred()``: a signal there is
raised when the block ends.

Worker processes (``lmforge.sweep.workers``) lead process groups of their own, so a terminal's
Ctrl-C reaches the main process only. It cancels the queued trials and sends SIGTERM to each
worker's group (``stop_workers``); the worker stops its trial the same way (its step ends its
MLflow run and releases its checkpoint lock, the trial is marked interrupted) and ends itself
(``exit_worker``: ``os._exit``, without the seconds torch's exit handlers take); an idle worker
(or one still starting) ends at once. A group still there after ``GRACE_S`` gets SIGKILL; what
such a worker left (a RUNNING trial, a lock) is then cleaned up by the main process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

from lmforge.errors import TrainingError

SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 5.0  # a worker's time to stop its trial; the whole stop must take under 10 s
# signum: the stop signal, once one came; deferred: depth of ``deferred`` blocks; worker: this is
# a pool worker; in_trial: a worker inside ``interruptible`` (idle otherwise).
_state: dict[str, int | None] = {"signum": None, "deferred": 0, "worker": 0, "in_trial": 0}


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived (``signum``)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SweepStopped(TrainingError):
    """The sweep was stopped by a signal: exit code 128 + the signal, as a shell reports it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def signal_name(exc: BaseException) -> str:
    return signal.Signals(signum_of(exc)).name


def signum_of(exc: BaseException) -> int:
    """The signal behind an interrupt (a plain KeyboardInterrupt is Ctrl-C: SIGINT)."""
    return getattr(exc, "signum", signal.SIGINT)


def _handler(signum: int, frame) -> None:
    if _state["worker"] and not _state["in_trial"]:
        exit_worker(signum)  # an idle worker has nothing to clean up
    if _state["signum"] is not None:
        return  # already stopping: let the cleanup finish
    _state["signum"] = signum
    if not _state["deferred"]:
        raise Interrupted(signum)


def install(worker: bool = False) -> None:
    """From now on SIGINT and SIGTERM raise ``Interrupted`` in this (main) thread; in a pool
    ``worker`` only inside ``interruptible`` (a trial), and end the worker when it is idle."""
    _state.update(signum=None, deferred=0, worker=int(worker), in_trial=0)
    for sig in SIGNALS:
        signal.signal(sig, _handler)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """A worker's trial: a signal raises ``Interrupted`` in it (at once, if one came before)."""
    _state["in_trial"] = 1
    try:
        if _state["signum"] is not None:
            raise Interrupted(_state["signum"])
        yield
    finally:
        _state["in_trial"] = 0


@contextlib.contextmanager
def on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``Interrupted`` during the block (signals can only be set in the
    main thread; elsewhere the block runs as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    install()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A signal during the block is raised when it ends, not in the middle of it."""
    _state["deferred"] += 1
    try:
        yield
    finally:
        _state["deferred"] -= 1
    if _state["signum"] is not None and not _state["deferred"]:
        raise Interrupted(_state["signum"])


def exit_worker(signum: int) -> None:
    """End this worker now. Nothing of a trial is left to do by then (a stopped trial has
    recorded itself), and the worker holds no multiprocessing lock (``quiet_progress_lock``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signum)


def quiet_progress_lock() -> None:
    """tqdm's default lock is a multiprocessing one; a worker ended by ``os._exit`` would leave
    it to the resource tracker, which warns of a leaked semaphore. One process: a thread lock."""
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


def lead_own_group() -> None:
    """Make this process the leader of a new process group (a terminal's Ctrl-C then reaches
    only the main process), and have the kernel SIGKILL it if its parent dies first."""
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def stop_workers(processes: list, grace_s: float = GRACE_S) -> None:
    """Stop pool workers (``lead_own_group``): SIGTERM each worker's group (its trial stops and
    records itself, then the worker ends), wait up to ``grace_s`` for them, and SIGKILL whatever
    is left of each group."""
    from multiprocessing.connection import wait

    _signal_groups(processes, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (alive := [p for p in processes if p.exitcode is None]) and time.monotonic() < deadline:
        wait([p.sentinel for p in alive], timeout=max(0.0, deadline - time.monotonic()))
    _signal_groups(processes, signal.SIGKILL)  # the stragglers, and what they started
    for p in processes:
        p.join(timeout=grace_s)


def _signal_groups(processes: list, sig: int) -> None:
    for p in processes:
        try:
            os.killpg(p.pid, sig)  # the worker leads its group (lead_own_group)
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                if p.exitcode is None:
                    os.kill(p.pid, sig)  # it had not made its group yet
