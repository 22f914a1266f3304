"""Plain-text batches validated in worker processes, their results applied in reading order.

The validate stage reads a plain-text corpus through ``datasets`` in this process and hands each
batch of documents (``lmforge.data.columnar.TextBatch``, Arrow strings: pickled as buffers, not
as Python objects) to a pool of worker processes. A worker splits, masks, profiles and encodes
the batch (``columnar.process``) and sends back its profile rows, its JSON lines a split and the
personal-data matches it counted. Results are applied strictly in the order the batches were
read, so the split files, the profile and the tally are byte for byte what one process writes
(``tests/test_columnar.py``); this process meanwhile reads the next batches and runs the Great
Expectations checks of each full chunk of profile rows.

At most ``IN_FLIGHT`` batches a worker are out at once (bounded memory). The first batch is
validated here: a corpus of one batch (the shipped data, every test's) never starts a pool.
Workers are spawned, not forked: this process may hold threads (MLflow, Arrow's pools) that a
fork would copy in an unknown state; like every spawned pool, they import the ``__main__``
script, so a script that calls ``validate`` keeps its code under ``if __name__ ==
"__main__":``. A worker that dies (out of memory, killed) stops the stage
with the fix, and nothing is written: the stage's output folder is only renamed into place
after everything passed.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from lmforge.cores import usable_cores
from lmforge.data.columnar import Done, TextBatch, process
from lmforge.data.pii import Allow, Tally
from lmforge.data.records import Kind
from lmforge.errors import DataError

IN_FLIGHT = 2  # batches a worker: one being validated, one waiting, while this process reads


def worker_count(num_proc: int) -> int:
    """``data.num_proc``: 0 is one a usable core (``lmforge.cores``)."""
    return num_proc or usable_cores()


def _validate(
    batch: TextBatch,
    kind: Kind,
    salt: tuple[str, float, float],
    mode: str,
    allow: Allow,
    checked: Allow | None,
) -> Done:
    """In a worker: one batch, with a tally of its own (merged into the stage's)."""
    tally = Tally(mode, allow)
    done = process(batch, kind, salt, tally, checked)
    done.tally = tally
    return done


class BatchPool:
    """``validate(batch)`` yields the batches done so far, in reading order; ``drain()`` the
    rest. Use as a context manager: leaving it stops the workers."""

    def __init__(
        self,
        workers: int,
        kind: Kind,
        salt: tuple[str, float, float],
        pii: Tally,
        checked: Allow | None,
    ):
        self.workers, self.kind, self.salt = workers, kind, salt
        self.pii, self.checked = pii, checked
        self.pool: ProcessPoolExecutor | None = None
        self.pending: deque[Future] = deque()
        self.seen = 0

    def validate(self, batch: TextBatch) -> Iterator[Done]:
        self.seen += 1
        if self.workers <= 1 or self.seen == 1:
            yield from self.drain()  # none pending when in-process: order is kept either way
            yield process(batch, self.kind, self.salt, self.pii, self.checked)
            return
        if self.pool is None:
            spawn = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(self.workers, mp_context=spawn)
        args = (self.kind, self.salt, self.pii.mode, self.pii.allow, self.checked)
        self.pending.append(self.pool.submit(_validate, batch, *args))
        while len(self.pending) > self.workers * IN_FLIGHT:
            yield self._next()

    def drain(self) -> Iterator[Done]:
        while self.pending:
            yield self._next()

    def _next(self) -> Done:
        try:
            done = self.pending.popleft().result()
        except BrokenProcessPool as exc:
            raise DataError(
                f"a validation worker process died ({exc}). Out of memory: set data.num_proc "
                "to fewer workers (1: none) in params.yaml. Called from a script of yours: "
                "workers are spawned and import it, so guard its code with "
                "`if __name__ == '__main__':`."
            ) from None
        if done.tally is not None:
            self.pii.merge(done.tally)
        return done

    def __enter__(self) -> BatchPool:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
