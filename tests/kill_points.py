"""Kill a child process just before its k-th filesystem step, for crash-consistency tests.

``kill_before_step(k, names)`` replaces the ``os`` functions named (renames, unlinks) and
``shutil.rmtree`` in this process with counting versions; the k-th call ends the process with
``os._exit(9)`` before doing anything, except a tree removal, which first removes one file (a
kill inside it leaves a tree partly removed). Returns ``arm``: counting starts when it is
called, so the steps before the protocol under test (writing the data) are not counted.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

KILLED = 9


def kill_before_step(k: int, names: tuple[str, ...] = ("replace", "rename")) -> Callable:
    state = {"calls": 0, "armed": False}

    def counted(fn: Callable, partial: bool = False) -> Callable:
        def step(path, *args, **kwargs):
            if state["armed"]:
                state["calls"] += 1
                if state["calls"] == k:
                    files = [p for p in Path(path).rglob("*") if p.is_file()] if partial else []
                    if files:
                        files[0].unlink()
                    os._exit(KILLED)
            return fn(path, *args, **kwargs)

        return step

    for name in names:
        setattr(os, name, counted(getattr(os, name)))
    shutil.rmtree = counted(shutil.rmtree, partial=True)

    def arm() -> None:
        state["armed"] = True

    return arm
