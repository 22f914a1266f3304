"""Keep freed large tensors in the heap on glibc, so a CPU training step does not page-fault.

glibc hands every allocation over its mmap threshold (128 KiB, growing to at most 32 MiB) to
``mmap`` and gives it back with ``munmap`` when freed. A training step allocates and frees the
same large buffers every step (the logits alone are batch x context x vocabulary x 4 bytes: 34 MB
for the default run), so each step maps fresh pages and the kernel zeroes them on first touch:
about 45,000 minor page faults per step of the default model. Raising the mmap threshold and the
trim threshold keeps those blocks in the heap, where the next step reuses them; peak memory is
the same, since the blocks are live at the peak anyway. ``benchmarks/allocator.py`` measures
both the faults and the step time.

A user's own choice wins: nothing is changed when a ``MALLOC_*`` variable is set or another
allocator (jemalloc, tcmalloc) is preloaded, or when ``LMFORGE_KEEP_HEAP=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
THRESHOLD = 1 << 30  # 1 GiB: above any one tensor of a CPU-sized model


def keep_freed_blocks() -> str:
    """Set glibc's thresholds for this process; return what was done, for the run's log."""
    if os.environ.get("LMFORGE_KEEP_HEAP", "1") == "0":
        return "off (LMFORGE_KEEP_HEAP=0)"
    if any(k.startswith("MALLOC_") for k in os.environ) or "GLIBC_TUNABLES" in os.environ:
        return "left to the environment's MALLOC_* settings"
    if "malloc" in os.environ.get("LD_PRELOAD", ""):
        return "left to the preloaded allocator"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = libc.mallopt(_M_MMAP_THRESHOLD, THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, THRESHOLD)
    return "kept in the heap" if ok else "refused by mallopt"
