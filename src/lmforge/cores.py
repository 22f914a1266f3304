"""How many CPU cores this process really has, and how to share them between processes.

A pod limited to 2 CPUs on a 64-core node sees 64 cores in its affinity mask and ``os.cpu_count``
but is throttled to 2 by its cgroup quota: threads sized from the mask spin against each other.
Everything that sizes thread pools (the local runner, ``torchrun`` from the CLI, a replica's own
``init_distributed``) asks here. Torch-free: the CLI and the launcher import it.
"""

from __future__ import annotations

import os
from pathlib import Path


def cpuinfo_field(key: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The first processor's ``key`` in ``/proc/cpuinfo`` (``vendor_id``, ``model name``), ""
    where there is none (not Linux, or the key is absent)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return ""


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The container's CPU quota in cores (cgroup v2 ``cpu.max``, v1 ``cfs_quota_us``), if set."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cores(affinity: int | None = None, quota: float | None = None) -> int:
    """The cores this process really has: its affinity mask, capped by the cgroup quota."""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        affinity = affinity or os.cpu_count() or 1
        quota = cgroup_cpu_limit() if quota is None else quota
    cores = affinity if quota is None else min(affinity, max(1, int(quota)))
    return max(1, cores)


def threads_per_process(cores: int, procs: int) -> int:
    """Intra-op threads for each of ``procs`` processes sharing ``cores``: an even split, never
    more threads in all than cores (oversubscribed threads spin against each other), at least
    one (more processes than cores can only time-share)."""
    return max(1, cores // max(1, procs))
