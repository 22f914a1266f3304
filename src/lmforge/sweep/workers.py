"""Several trials at once on this machine (``sweep.parallelism``): one process per trial slot.

torch's intra-op thread count is per process, so concurrent trials must be processes, each
given an even share of the cores (``lmforge.cores``): two trials on 2 cores train on one thread
each instead of two threads each fighting for the same cores. Workers are spawned (not forked:
a forked torch or MLflow client is not safe), and each pays the imports once, then runs the
tasks it is handed. What they share is on disk: the Optuna study (SQLite in the output folder,
which Optuna lets several processes use) and the MLflow store.

Stopping (Ctrl-C, SIGTERM: ``lmforge.sweep.stopping``): each worker leads its own process group
and dies with the main process; leaving ``pool``'s block by an exception cancels the queued
tasks and stops the workers' groups at once, instead of waiting for every queued trial.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from lmforge.config import Config
from lmforge.cores import threads_per_process, usable_cores
from lmforge.sweep import stopping


def trial_threads(parallelism: int, cores: int | None = None) -> int:
    """Torch threads for each of ``parallelism`` concurrent trials."""
    return threads_per_process(usable_cores() if cores is None else cores, parallelism)


def with_threads(cfg: Config, step: str, threads: int) -> list[str]:
    """The ``--set`` item that caps the step's threads at ``threads`` (a smaller explicit
    ``num_threads`` is kept; 0 means "all cores", which concurrent trials must not take)."""
    own = getattr(cfg, step).num_threads
    return [f"{step}.num_threads={threads if own == 0 else min(own, threads)}"]


def init_worker() -> None:
    """Each worker, first: its own process group, and SIGINT/SIGTERM stop its trial."""
    stopping.lead_own_group()
    stopping.quiet_progress_lock()
    stopping.install(worker=True)


@contextlib.contextmanager
def pool(parallelism: int) -> Iterator[ProcessPoolExecutor]:
    """The workers for the block, which waits for its tasks itself; an exception out of it
    (``stopping.Interrupted``) cancels the queued tasks and stops the running ones and the
    workers (``stopping.stop_workers``) before it goes on."""
    before = set(multiprocessing.active_children())
    executor = ProcessPoolExecutor(
        max_workers=parallelism,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
    )
    try:
        yield executor
    except BaseException:
        executor.shutdown(wait=False, cancel_futures=True)
        stopping.stop_workers([p for p in multiprocessing.active_children() if p not in before])
        raise
    finally:
        executor.shutdown(wait=True)  # quick: every task is done, cancelled or its worker gone


def results(futures: list[Future]) -> list[Any]:
    """Each task's result, in order; the first task's exception is raised after all finished
    (a trial's own failure is recorded by the trial; this is the worker machinery failing)."""
    errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
    return [f.result() for f in futures]
