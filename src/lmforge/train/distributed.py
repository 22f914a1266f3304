"""Process-group set-up from the environment, the same way under torchrun and a PyTorchJob.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT; the
Kubeflow training operator sets MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK (one process per pod)
and PET_* for torchrun inside a pod. ``init_distributed`` only reads those, so a laptop and a GPU
pool differ by device and backend: gloo on CPU, NCCL on GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from lmforge import machine
from lmforge.cores import threads_per_process, usable_cores
from lmforge.errors import TrainingError


@dataclass(frozen=True)
class Runtime:
    """Where this process sits: its rank, the world, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise TrainingError(f"environment variable {name}={value!r}: expected an integer") from None


def runtime_from_env(device: str = "auto") -> Runtime:
    """Read ranks from the environment (no env: a single process); pick the device."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", _env_int("PET_NPROC_PER_NODE", 1))
    if not 0 <= rank < world:
        raise TrainingError(f"RANK={rank} is outside WORLD_SIZE={world}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise TrainingError("pretrain.device=cuda but no CUDA device is visible")
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    else:
        dev = torch.device("cpu")
    return Runtime(rank, world, local_rank, max(local_world, 1), dev)


def init_distributed(device: str = "auto", num_threads: int = 0) -> Runtime:
    """Join the process group the environment describes (if any); threads and allocator as
    ``lmforge.machine`` sets them for every face (CLI, KFP component, replica)."""
    rt = runtime_from_env(device)
    machine.configure(rt.device.type, rt.local_world_size, num_threads)
    if rt.device.type == "cuda":
        torch.cuda.set_device(rt.device)
    if rt.distributed and not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(var):
                raise TrainingError(
                    f"WORLD_SIZE={rt.world_size} but {var} is not set: launch with torchrun, "
                    "`lmforge pretrain --backend inline --nproc N`, or a PyTorchJob"
                )
        backend = "nccl" if rt.device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            store=_store(rt),
            rank=rt.rank,
            world_size=rt.world_size,
            device_id=_device_id(rt),
            timeout=collective_timeout(),
        )
    return rt


def collective_timeout():
    """How long a collective may wait for a rank: an hour, not NCCL's 10-minute default, which
    rank 0's end-of-run work (gathering, saving and uploading a multi-GB model while the others
    wait at the closing barrier) can outlast. A dead rank is still found at once: torchrun's
    agent restarts the group when any worker exits. ``LMFORGE_COLLECTIVE_TIMEOUT_S`` overrides."""
    from datetime import timedelta

    return timedelta(seconds=_env_int("LMFORGE_COLLECTIVE_TIMEOUT_S", 3600))


def _store(rt: Runtime) -> dist.Store:
    """The rendezvous store at MASTER_ADDR:MASTER_PORT, with keys scoped to this restart.

    Under torchrun the agent's store outlives a worker restart; without a per-attempt prefix the
    restarted ranks read the dead ranks' gloo addresses from the first attempt and never connect.
    """
    from datetime import timedelta

    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        rt.world_size,
        is_master=rt.rank == 0 and not agent_store,
        timeout=timedelta(minutes=10),
        multi_tenant=not agent_store,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"lmforge/attempt-{attempt}", store)


def _device_id(rt: Runtime) -> torch.device | None:
    return rt.device if rt.device.type == "cuda" else None


def shutdown() -> None:
    if not dist.is_initialized():
        return
    gloo = dist.get_backend() == "gloo"
    dist.destroy_process_group()
    if gloo:
        # Gloo's worker threads drop each finished collective, and the Python tensors it holds,
        # only with the GIL. The process group object is freed later, when the DDP model that
        # references it goes, by a destructor that holds the GIL and joins those threads
        # (pytorch/pytorch#56297): a thread still waiting for the GIL then hangs the rank at
        # exit. Sleeping hands them the GIL first.
        time.sleep(0.1)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over ranks (one collective); identity in a single process."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over ranks, on its device and without waiting for it (one collective);
    ``t`` itself in a single process."""
    if not dist.is_initialized():
        return t
    dist.all_reduce(t)
    return t / dist.get_world_size()


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def torchrun_command(nproc: int, argv: list[str], max_restarts: int = 0) -> list[str]:
    """``torchrun`` starting ``lmforge <argv>`` on ``nproc`` local processes.

    ``--nproc`` is dropped from ``argv`` so each worker trains inline instead of starting its own
    torchrun. Under a PyTorchJob with several processes per pod the PET_* variables give the
    node count and rank; torchrun reads them itself.
    """
    inner: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        inner.append(arg)
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}"]
    if "PET_NNODES" not in os.environ and "MASTER_ADDR" not in os.environ:
        cmd.append("--standalone")  # one machine: torchrun picks a free port itself
    lmforge = shutil.which("lmforge") or os.path.join(os.path.dirname(sys.executable), "lmforge")
    return [*cmd, lmforge, *inner]


def run_torchrun(nproc: int, argv: list[str], max_restarts: int = 0) -> int:
    """Run ``lmforge <argv>`` under torchrun with ``nproc`` processes; return its exit code."""
    if nproc < 1:
        raise TrainingError(f"--nproc {nproc}: expected at least 1 process")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads_per_process(usable_cores(), nproc)))
    return subprocess.run(torchrun_command(nproc, argv, max_restarts), env=env).returncode
