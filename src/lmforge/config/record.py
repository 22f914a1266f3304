"""Which parameters a step really reads: the evidence that ``dvc.yaml`` declares them all.

With ``LMFORGE_RECORD_PARAMS=FILE`` set, :func:`record_reads` makes every section of a loaded
config note the keys the step reads, and appends ``{"step": ..., "keys": [...]}`` to FILE when the
process exits. A test runs ``dvc repro`` so and compares each stage's reads with its ``params``.
Hashing the whole config for lineage (``Config.params_hash``) is not a read: it is paused.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

ENV = "LMFORGE_RECORD_PARAMS"
_reads: set[str] = set()
_paused = [False]


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Reads inside this block are not recorded (whole-config hashing, serialising)."""
    before, _paused[0] = _paused[0], True
    try:
        yield
    finally:
        _paused[0] = before


def _recording(cls: type) -> type:
    fields = frozenset(f.name for f in dataclasses.fields(cls))

    def __getattribute__(self: Any, key: str) -> Any:
        if key in fields and not _paused[0]:
            _reads.add(f"{cls.name}.{key}")
        return object.__getattribute__(self, key)

    return type(
        cls.__name__, (cls,), {"__getattribute__": __getattribute__, "__module__": cls.__module__}
    )


def record_reads(cfg: Any, step: str) -> None:
    """Record the keys of ``cfg`` that this process reads, when ``LMFORGE_RECORD_PARAMS`` is set."""
    path = os.environ.get(ENV)
    if not path:
        return
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        section.__class__ = _recording(type(section))

    def write() -> None:
        line = json.dumps({"step": step, "pid": os.getpid(), "keys": sorted(_reads)}) + "\n"
        with open(path, "a") as fh:  # one write of one line: concurrent replicas don't interleave
            fh.write(line)

    atexit.register(write)
