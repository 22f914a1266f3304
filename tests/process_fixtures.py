"""Child Python processes for fault-injection tests, waiting for the file they signal with, and
checking that the processes a test started are gone."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil


def python_child(code: str, args: list[str], env: dict[str, str], **popen) -> subprocess.Popen:
    """``python -c code args...`` with pipes for its output (text)."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    """Until ``path`` exists; fails with the child's stderr if it exits first or at the deadline."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited {proc.returncode}: {proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"{path} did not appear within {seconds} s"
        time.sleep(0.01)


def signalable_child(code: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """``python_child`` that a test can stop as a user would, with SIGINT or SIGTERM: in a session
    of its own (out of pytest's process group), and with SIGINT's default restored (a background
    job, as CI runs pytest, starts its children ignoring it)."""
    restore_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    return python_child(code, args, env, start_new_session=True, preexec_fn=restore_sigint)


def running(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``processes`` still running (psutil tells a reused pid apart; a zombie has
    ended)."""
    alive = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def still_running_after(processes: list[psutil.Process], seconds: float) -> list[str]:
    """Wait up to ``seconds`` for ``processes`` to end; what still runs then, described."""
    deadline = time.monotonic() + seconds
    while running(processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [f"{p.pid} {' '.join(p.cmdline())}" for p in running(processes)]


# A local runner in a process of its own: the job and what it needs, from a JSON file.
RUNNER = """
import json, sys
from lmforge.launch.local_runner import LocalRunner
from lmforge.launch.trainjob_runner import TrainJobRunner
d = json.load(open(sys.argv[1]))
kind = (TrainJobRunner, d["runtime"]) if d.get("runtime") else (LocalRunner,)
options = dict(volumes={d["pvc"]: d["root"]}, configmaps=[d["configmap"]], echo=print)
print(kind[0](d["job"], *kind[1:], **options).run(), flush=True)
"""
