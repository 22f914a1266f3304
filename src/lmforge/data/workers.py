"""Plain-text files read and validated in worker processes, their results applied in order.

The validate stage hands each unit of plain text (``lmforge.data.sources.TextFiles``: a file of
documents split on blank lines, or a run of one-document files) to a pool of worker processes.
A worker reads it through ``datasets`` itself, a batch of documents at a time, and splits, masks,
profiles and encodes each batch (``columnar.process``); it writes the batches' JSON lines to part
files of its own, one a split, and sends back only the profile columns (Arrow and numpy buffers)
and the personal-data matches it counted. This process applies the results strictly in the order
the inputs were listed: it appends each part file to its split's file and adds the profile rows,
so the split files, the profile and the tally are byte for byte what one process writes
(``tests/test_columnar.py``). Meanwhile it reads the JSON-lines inputs and runs the Great
Expectations checks of each full chunk of profile rows. Reading in the workers matters: when this
process read every batch and shipped it out, it was the one every batch waited on
(docs/benchmarks/data_throughput.md).

At most ``IN_FLIGHT`` units a worker are out at once; a worker holds one batch of documents at a
time and the part files hold the rest, so memory is bounded by the batch, not by the file. Less
plain text than ``POOL_MIN_BYTES`` (the shipped data, every test's) never starts a pool: each
worker costs about a second of imports. Workers are spawned, not forked: this process may hold
threads (MLflow, Arrow's pools) that a fork would copy in an unknown state; like every spawned
pool, they import the ``__main__`` script, so a script that calls ``validate`` keeps its code
under ``if __name__ == "__main__":``. A worker that dies (out of memory, killed) stops the stage
with the fix, a file it cannot read stops it with the worker's own error, and nothing is written:
the stage's output folder is only renamed into place after everything passed.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from lmforge.cores import usable_cores
from lmforge.data.columnar import Done
from lmforge.data.curate import Rules, process_batch
from lmforge.data.pii import Allow, Tally
from lmforge.data.records import Kind
from lmforge.data.sources import TextFiles, text_batches
from lmforge.data.split import SPLITS
from lmforge.errors import DataError

IN_FLIGHT = 2  # units a worker: one being validated, one waiting
POOL_MIN_BYTES = 16 * 2**20  # less plain text than this is validated in this process


def worker_count(num_proc: int) -> int:
    """``data.num_proc``: 0 is one a usable core (``lmforge.cores``)."""
    return num_proc or usable_cores()


def _worker_started() -> None:
    """A worker reads text into Arrow and never needs torch, which ``datasets`` otherwise
    imports when it is installed (its ``USE_TORCH`` switch): 1.7 s of CPU a worker, a sixth of
    a 1 GB corpus's work on 2 cores. Only before ``datasets`` is imported can it still take."""
    if "datasets" not in sys.modules:
        os.environ["USE_TORCH"] = "0"


def _validate_files(
    task: TextFiles,
    part: Path,
    kind: Kind,
    salt: tuple[str, float, float],
    mode: str,
    allow: Allow,
    checked: Allow | None,
    rules: Rules | None,
) -> Done:
    """In a worker: read, curate and validate ``task``, its JSON lines into
    ``part/{split}.jsonl``, with a tally and curation counts of its own (merged into the
    stage's in input order, where the duplicates among them are decided)."""
    tally = Tally(mode, allow)
    cols: list = []
    pending = None
    counts = dict.fromkeys(SPLITS, 0)
    part.mkdir(parents=True)
    parts = {split: part / f"{split}.jsonl" for split in SPLITS}
    files = {split: path.open("wb") for split, path in parts.items()}
    try:
        for batch in text_batches(task):
            done = process_batch(batch, rules, kind, salt, tally, checked)
            cols += done.cols
            if pending is None:
                pending = done.curation
            elif done.curation is not None:
                pending.merge(done.curation)
            for split, lines in done.lines.items():
                files[split].write(lines)
                counts[split] += done.counts[split]
    finally:
        for fh in files.values():
            fh.close()
    return Done(cols, {}, counts, tally, parts, curation=pending)


class BatchPool:
    """``validate(task)`` yields the units validated so far, in reading order; ``drain()`` the
    rest. Use as a context manager: leaving it stops the workers and removes the part files
    (under ``scratch``)."""

    def __init__(
        self,
        workers: int,
        kind: Kind,
        salt: tuple[str, float, float],
        pii: Tally,
        checked: Allow | None,
        scratch: Path,
        text_bytes: int,
        rules: Rules | None = None,
    ):
        self.workers, self.kind, self.salt, self.rules = workers, kind, salt, rules
        self.pii, self.checked, self.scratch = pii, checked, scratch
        self.parallel = workers > 1 and text_bytes >= POOL_MIN_BYTES
        self.pool: ProcessPoolExecutor | None = None
        self.pending: deque[Future] = deque()
        self.seen = 0

    def validate(self, task: TextFiles) -> Iterator[Done]:
        if not self.parallel:  # in this process, a batch at a time
            for batch in text_batches(task):
                yield process_batch(batch, self.rules, self.kind, self.salt, self.pii, self.checked)
            return
        if self.pool is None:
            spawn = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(
                self.workers, mp_context=spawn, initializer=_worker_started
            )
        self.seen += 1
        part = self.scratch / f"{self.seen:06d}"
        args = (self.kind, self.salt, self.pii.mode, self.pii.allow, self.checked, self.rules)
        self.pending.append(self.pool.submit(_validate_files, task, part, *args))
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
        shutil.rmtree(self.scratch, ignore_errors=True)
