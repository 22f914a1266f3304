"""MKL's fast matmul kernels on AMD CPUs, for the processes the lmforge CLI starts.

The x86-64 torch wheels do their fp32 matmuls in Intel MKL, and MKL picks its kernels by CPU
vendor: on an AMD CPU its single-precision GEMM takes a slower generic path whatever AVX2 the
CPU has (on a 2-core AMD EPYC with AVX2 only, 148 against 186 GFLOP/s, and a training step of
the reference shape 1.25x slower; ``docs/benchmarks/training.md``). MKL asks one exported
function, ``mkl_serv_intel_cpu_true``, whether the CPU is Intel's. A one-line library that answers
yes, preloaded before torch loads, lets MKL choose its kernels by the CPU's features instead: the
workaround PyTorch's own maintainers give (pytorch/builder#1245).

The CLI applies it to itself (``exec_with_shim``, first thing in ``lmforge.cli.main``): on
x86-64 Linux with an AMD CPU it compiles the library once with the system C compiler (``$CC``,
else ``cc``) into the user cache, then re-executes the same command with it in ``LD_PRELOAD``;
every process it starts (torchrun workers, local replicas, DVC's next stage through the CLI)
inherits or re-applies it. ``LMFORGE_MKL_SHIM=0`` turns it off. Without a compiler, or on any
failure, the command runs as before. ``state()`` is the one line that training prints and
records (metrics.json, MLflow params): whether this process has it, and if not, why.

Library use (``import lmforge``, the KFP components) is not changed: only the CLI re-executes.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from lmforge.cores import cpuinfo_field

SOURCE = "int mkl_serv_intel_cpu_true(void) { return 1; }\n"
SWITCH = "LMFORGE_MKL_SHIM"  # "0": never
OFF = "LMFORGE_MKL_SHIM_OFF"  # why the CLI could not apply it (its child processes do not retry)
NAME = f"lmforge-mkl-shim-{hashlib.sha256(SOURCE.encode()).hexdigest()[:12]}.so"


def cpu_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """``vendor_id`` of the first processor (e.g. ``AuthenticAMD``), "" where unknown."""
    return cpuinfo_field("vendor_id", cpuinfo)


def wanted(env: Mapping[str, str], vendor: str, system: str, machine: str) -> tuple[bool, str]:
    """The pure rule: whether this process should have the shim, and why (or why not)."""
    if env.get(SWITCH) == "0":
        return False, f"{SWITCH}=0"
    if system != "Linux" or machine.lower() not in ("x86_64", "amd64"):
        return False, f"{system} {machine}: not an x86-64 Linux CPU"
    if vendor != "AuthenticAMD":
        return False, f"{vendor or 'unknown'} CPU: MKL already takes its fast path"
    return True, "AMD CPU: MKL's fast kernels need the shim"


def _rule(env: Mapping[str, str]) -> tuple[bool, str]:
    return wanted(env, cpu_vendor(), platform.system(), platform.machine())


def shim_path(env: Mapping[str, str] = os.environ) -> Path:
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "lmforge" / NAME


def preloaded(env: Mapping[str, str] = os.environ) -> bool:
    return any(Path(p).name == NAME for p in env.get("LD_PRELOAD", "").replace(":", " ").split())


def build(path: Path, compiler: str | None) -> str:
    """Compile the shim to ``path`` unless it is there; "" on success, else why not. Atomic:
    two processes building at once each write their own file and rename it into place."""
    if path.is_file():
        return ""
    cc = shutil.which(compiler) if compiler else None
    if cc is None:
        return f"no C compiler ({compiler or 'cc'}) to build it"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            source, built = Path(tmp) / "shim.c", Path(tmp) / NAME
            source.write_text(SOURCE)
            cmd = [cc, "-shared", "-fPIC", "-O2", "-o", str(built), str(source)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                return f"{cc} failed: {(done.stderr or done.stdout).strip()[:200]}"
            os.replace(built, path)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"could not build it in {path.parent}: {exc}"
    return ""


def exec_with_shim() -> None:
    """Re-execute this command with the shim preloaded when the rule wants it; otherwise (or if
    anything fails) return and let the command run as it is. Call before anything prints."""
    env = os.environ
    if preloaded(env) or env.get(SWITCH) == "0" or OFF in env:
        return
    ok, _ = _rule(env)
    if not ok:
        return
    path = shim_path(env)
    why_not = build(path, env.get("CC") or "cc")
    if why_not:
        os.environ[OFF] = why_not
        return
    preload = " ".join(p for p in (str(path), env.get("LD_PRELOAD", "")) if p)
    try:
        os.execve(
            sys.executable, [sys.executable, *sys.orig_argv[1:]], {**env, "LD_PRELOAD": preload}
        )
    except OSError as exc:
        os.environ[OFF] = f"re-executing failed: {exc}"


_announced = False


def announce() -> None:
    """Print ``state()`` once per process (on CPU training, next to the precision line)."""
    global _announced
    if not _announced:
        _announced = True
        print(f"mkl shim: {state()}", file=sys.stderr, flush=True)


# MKL's code branches (mkl_cbwr.h): what its automatic dispatch picked in this process.
BRANCHES = {2: "COMPATIBLE", 3: "SSE2", 8: "SSE4_2", 9: "AVX", 10: "AVX2", 12: "AVX512"}


def mkl_branch() -> str | None:
    """The kernel branch MKL dispatches to here (e.g. ``AVX2``; ``COMPATIBLE`` is its generic
    path), asked of the MKL linked into torch; None where torch has no MKL (ARM, macOS)."""
    import ctypes

    import torch

    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        code = int(lib.mkl_serv_cbwr_get_auto_branch())
    except (OSError, AttributeError):
        return None
    return BRANCHES.get(code, f"branch {code}")


@functools.cache
def state() -> str:
    """One line for logs and run records: ``on (...)`` or ``off (why)``, with the branch MKL
    dispatches to in this process (fixed at its start, so asked once)."""
    env = os.environ
    ok, why = _rule(env)
    branch = mkl_branch()
    kernels = f"; MKL's kernels: {branch}" if branch else ""
    if preloaded(env):
        return f"on ({why}{kernels})" if ok else f"on (preloaded by hand; {why}{kernels})"
    if not ok:
        return f"off ({why}{kernels})"
    off = env.get(OFF) or "AMD CPU, but not started by the lmforge CLI"
    return f"off ({off}{kernels})"
