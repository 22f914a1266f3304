"""MKL's fast matmul kernels on AMD CPUs, for the processes the lmforge CLI starts.

The x86-64 torch wheels do their fp32 matmuls in Intel MKL, and MKL picks its kernels by CPU
vendor: on an AMD CPU its single-precision GEMM takes a slower generic path whatever AVX2 the
CPU has (on a 2-core AMD EPYC with AVX2 only, 148 against 186 GFLOP/s, and a training step of
the reference shape 1.25x slower; ``docs/benchmarks/training.md``). MKL asks one exported
function, ``mkl_serv_intel_cpu_true``, whether the CPU is Intel's. A one-line library that answers
yes, preloaded before torch loads, lets MKL choose its kernels by the CPU's features instead: the
workaround PyTorch's own maintainers give (pytorch/builder#1245).

Every face applies it to itself through ``lmforge.machine.enter`` (``exec_with_shim``: first
thing in ``lmforge.cli.main``, and in a KFP component's ``step_config``): on
x86-64 Linux with an AMD CPU it compiles the library once with the system C compiler (``$CC``,
else ``cc``) into the user cache, then re-executes the same command with it in ``LD_PRELOAD``;
every process it starts (torchrun workers, local replicas, DVC's next stage through the CLI)
inherits or re-applies it. ``LMFORGE_MKL_SHIM=0`` turns it off. Without a compiler, or on any
failure, the command runs as before. ``state()`` is the one line that training prints and
records (metrics.json, MLflow params): whether this process has it, and if not, why. It says
"on" only when the library is mapped in this process and MKL dispatches to a fast branch: an
``LD_PRELOAD`` the loader refused is "off", with the reason.

Every lmforge process would run the cached library's code, so it is preloaded only if it is
what lmforge built: the file, the sha256 recorded beside it at build time and their folder must
be this user's and writable by no one else, and the file must match the recorded sha256. A
cached file that fails is rebuilt (``state()`` says why); a folder that fails is refused.

Library use (``import lmforge`` and a call of a step function) is not changed: only the entry
points re-execute.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from lmforge.cores import cpuinfo_field

SOURCE = "int mkl_serv_intel_cpu_true(void) { return 1; }\n"
SWITCH = "LMFORGE_MKL_SHIM"  # "0": never
OFF = "LMFORGE_MKL_SHIM_OFF"  # why the CLI could not apply it (its child processes do not retry)
REPLACED = "LMFORGE_MKL_SHIM_REPLACED"  # why the CLI rebuilt a cached file (for its own state())
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
    """In a folder of its own, which lmforge creates for this user alone."""
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "lmforge" / "mkl-shim" / NAME


def digest_path(path: Path) -> Path:
    """Where the sha256 of the built library is recorded."""
    return path.with_name(path.name + ".sha256")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _untrusted(path: Path) -> str:
    """Why ``path`` could hold someone else's code ("" if it cannot): a link, another owner, or
    writable by its group or others."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if st.st_uid != os.getuid():
        return f"{path} is owned by uid {st.st_uid}, not by this user (uid {os.getuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by its group or others (mode {stat.filemode(st.st_mode)})"
    return ""


def check(path: Path) -> str:
    """Why the cached shim at ``path`` must not be preloaded as it is ("" if it may)."""
    digest = digest_path(path)
    for p in (path, digest):
        if not p.exists() and not p.is_symlink():
            return f"{p} is missing"
        if why := _untrusted(p):
            return why
    recorded, actual = digest.read_text().strip(), _sha256(path)
    if recorded != actual:
        return f"{path} is not what lmforge built (sha256 {actual[:12]}, built {recorded[:12]})"
    return ""


def ensure(path: Path, compiler: str | None) -> tuple[str, str]:
    """A shim at ``path`` that may be preloaded: build it unless a trusted one is there.
    Returns (why there is none, "" if there is; why a file there was rebuilt, or "")."""
    try:
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        if why := _untrusted(path.parent):
            return f"{why}: not trusted to hold a library; fix: chmod go-w (or remove) it", ""
        stale = check(path)
        if not stale:
            return "", ""
        existed = path.exists() or path.is_symlink() or digest_path(path).exists()
        return build(path, compiler), stale if existed else ""
    except OSError as exc:
        return f"could not check or build it in {path.parent}: {exc}", ""


def preloaded(env: Mapping[str, str] = os.environ) -> bool:
    return any(Path(p).name == NAME for p in env.get("LD_PRELOAD", "").replace(":", " ").split())


def build(path: Path, compiler: str | None) -> str:
    """Compile the shim to ``path`` and record its sha256 beside it; "" on success, else why
    not. Atomic: two processes building at once each write their own files and rename them
    into place (one that reads a pair mid-way sees a mismatch and builds again)."""
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
            built.chmod(0o755)
            digest = Path(tmp) / "digest"
            digest.write_text(_sha256(built) + "\n")
            os.replace(digest, digest_path(path))
            os.replace(built, path)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"could not build it in {path.parent}: {exc}"
    return ""


def exec_with_shim() -> None:
    """Re-execute this command with the shim preloaded when the rule wants it; otherwise (or if
    anything fails) return and let the command run as it is. Call before anything prints."""
    global _replaced
    env = os.environ
    if REPLACED in env:  # this process is the re-executed one: its state() says why, no child's
        _replaced = env.pop(REPLACED)
    if preloaded(env) or env.get(SWITCH) == "0" or OFF in env:
        return
    ok, _ = _rule(env)
    if not ok:
        return
    path = shim_path(env)
    why_not, replaced = ensure(path, env.get("CC") or "cc")
    if why_not:
        os.environ[OFF] = why_not
        return
    preload = " ".join(p for p in (str(path), env.get("LD_PRELOAD", "")) if p)
    new_env = {**env, "LD_PRELOAD": preload} | ({REPLACED: replaced} if replaced else {})
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], new_env)
    except OSError as exc:
        os.environ[OFF] = f"re-executing failed: {exc}"


_announced = False
_replaced = ""  # why exec_with_shim rebuilt the cached file before this process was started


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


def mapped(maps: Path = Path("/proc/self/maps")) -> str | None:
    """The path of the shim as the loader mapped it into this process, or None (not loaded,
    or no ``/proc`` to ask)."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(maxsplit=5)
        # a file replaced since it was mapped (a rebuild) reads "PATH (deleted)"
        path = fields[5].removesuffix(" (deleted)") if len(fields) == 6 else ""
        if Path(path).name == NAME:
            return path
    return None


def _unloaded(env: Mapping[str, str]) -> str:
    """Why the shim that ``LD_PRELOAD`` names is not in this process: the loader refused it."""
    named = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if Path(p).name == NAME]
    path = Path(named[0])
    try:
        with path.open("rb") as f:
            kind = "not an ELF shared library" if f.read(4) != b"\x7fELF" else "refused"
    except OSError as exc:
        kind = f"unreadable ({exc.strerror})"
    return f"LD_PRELOAD names {path}, but the loader did not load it: {kind}"


@functools.cache
def state() -> str:
    """One line for logs and run records: ``on (...)`` or ``off (why)``, with the branch MKL
    dispatches to in this process (fixed at its start, so asked once). "on" only when the shim
    is mapped here and MKL dispatches to a fast branch."""
    env = os.environ
    ok, why = _rule(env)
    branch = mkl_branch()
    kernels = f"; MKL's kernels: {branch}" if branch else ""
    rebuilt = f"; rebuilt the cached shim: {_replaced}" if _replaced else ""
    if mapped() is not None:
        if branch is None:
            return "off (the shim is loaded, but torch has no MKL here)"
        if branch == "COMPATIBLE":
            return f"off (the shim is loaded, but MKL still takes its generic path{kernels})"
        return f"on ({why if ok else 'preloaded by hand; ' + why}{kernels}{rebuilt})"
    if preloaded(env):
        return f"off ({_unloaded(env)}{kernels})"
    if not ok:
        return f"off ({why}{kernels})"
    off = env.get(OFF) or "AMD CPU, but not started by the lmforge CLI"
    return f"off ({off}{kernels})"
