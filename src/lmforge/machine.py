"""What lmforge sets about the machine, in one place, applied the same way by every entry point.

Two moments, so that the same parameters give the same numbers whichever face runs a step:

- ``enter()``: first thing of a process that will compute, before torch loads: the lmforge CLI
  (``cli.main``), a KFP component (``kfp.runtime.step_config``) and the benchmarks call it. On an
  AMD CPU it gives the process MKL's fast kernels (``mkl_shim``: the same command re-executed with
  the shim preloaded; a no-op elsewhere, or with ``LMFORGE_MKL_SHIM=0``). Processes started from
  one that entered (torchrun workers, local replicas) inherit it.
- ``configure(device, local_processes, num_threads)``: once a step knows how many processes
  share this machine (``train.distributed.init_distributed``): torch's intra-op threads (an even
  share of the cores this process may really use, ``cores``; ``num_threads`` or
  ``OMP_NUM_THREADS`` win) and, on CPU, glibc's allocator thresholds (``allocator``).

The numeric precision is a setting of the run (``pretrain.precision``, ``train.precision``), not of
the machine: it is resolved from the config and the device, the same in every face. ``state()``
is the line a training run prints and records about the kernels.
"""

from __future__ import annotations

import os

from lmforge import mkl_shim
from lmforge.allocator import keep_freed_blocks
from lmforge.cores import threads_per_process, usable_cores


def enter() -> None:
    """Apply the process-wide tweaks that must precede torch: MKL's kernels on AMD (this may
    re-execute the current command; call it before anything is printed or written)."""
    mkl_shim.exec_with_shim()


def configure(device: str, local_processes: int, num_threads: int = 0) -> str:
    """Threads and, on CPU, the allocator; returns what was done to the allocator (for logs)."""
    import torch

    if num_threads > 0:
        torch.set_num_threads(num_threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        # Ranks on one machine share its cores; oversubscription slows every rank down. The
        # cgroup quota counts too: a 2-CPU pod on a 64-core node has 2 cores, not 64.
        torch.set_num_threads(threads_per_process(usable_cores(), local_processes))
    if device != "cpu":
        return "not on CPU"
    # A CPU step's large buffers would otherwise be unmapped and faulted in again every step.
    return keep_freed_blocks()


def announce() -> None:
    """Print the kernels' state once per process (CPU training, next to the precision line)."""
    mkl_shim.announce()


def state() -> str:
    """One line for run records: whether MKL's fast kernels are on in this process, and why."""
    return mkl_shim.state()
