"""Child Python processes for fault-injection tests, and waiting for the file they signal with."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def python_child(code: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """``python -c code args...`` with pipes for its output (text)."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    """Until ``path`` exists; fails with the child's stderr if it exits first or at the deadline."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited {proc.returncode}: {proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"{path} did not appear within {seconds} s"
        time.sleep(0.01)
