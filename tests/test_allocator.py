"""glibc's heap kept for training (``lmforge.allocator``): freed large tensors are reused,
not unmapped and faulted in again, and a user's own allocator settings are left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# In a fresh process (the thresholds cannot be undone): a step's pattern, two large buffers
# (64 and 16 MiB) made, filled and freed, 10 times; the minor page faults of the last 5, once
# glibc's heap has settled.
PROBE = """
import json, resource, torch
from lmforge.allocator import keep_freed_blocks
heap = keep_freed_blocks()
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 << 20).fill_(1.0)
    y = torch.empty(4 << 20).fill_(2.0)
    del x, y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"heap": heap, "faults": sum(faults[5:])}))
"""
PAGES = 5 * (80 << 20) // 4096  # what faulting every page in again costs over those 5


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "LMFORGE_"))}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_freed_large_tensors_are_reused_instead_of_faulted_in_again():
    kept = probe()
    default = probe(LMFORGE_KEEP_HEAP="0")
    assert kept["heap"] == "kept in the heap"
    assert default["heap"].startswith("off")
    assert default["faults"] > 0.8 * PAGES  # glibc's default: every fill maps fresh pages
    assert kept["faults"] < 0.25 * PAGES


def test_a_users_malloc_settings_are_left_alone():
    mine = probe(MALLOC_MMAP_THRESHOLD_="131072")
    assert mine["heap"] == "left to the environment's MALLOC_* settings"
    assert mine["faults"] > 0.8 * PAGES
