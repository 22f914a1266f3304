"""mkl_shim: a process the CLI starts on an AMD CPU gets MKL's fast kernels, and nothing else
changes: not the results, not a machine without a compiler, not an Intel CPU. Only the library
lmforge built is preloaded, and "on" means it is loaded in the process."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge import mkl_shim

AMD = mkl_shim.cpu_vendor() == "AuthenticAMD"
CC = shutil.which(os.environ.get("CC") or "cc")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler on this machine")

# What a CLI process does first (exec_with_shim), then a seeded fp32 matmul and what MKL picked.
PROBE = """
import json, lmforge.mkl_shim as m
m.exec_with_shim()
import torch
torch.manual_seed(0)
a, b = torch.randn(300, 200), torch.randn(200, 100)
print(json.dumps({"state": m.state(), "branch": m.mkl_branch(), "preload": m.preloaded(),
                  "product": (a @ b).tolist()}))
"""


def cached(tmp_path: Path) -> Path:
    """Where a probe's CLI process keeps the shim."""
    return mkl_shim.shim_path({"XDG_CACHE_HOME": str(tmp_path / "cache")})


def probe(tmp_path: Path, **env: str) -> dict:
    full = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), **env}
    for key in ("LD_PRELOAD", mkl_shim.SWITCH, mkl_shim.OFF):
        if key not in env:
            full.pop(key, None)  # as a user's shell starts it
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=full, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_rule():
    rule = mkl_shim.wanted
    assert rule({}, "AuthenticAMD", "Linux", "x86_64")[0]
    assert not rule({"LMFORGE_MKL_SHIM": "0"}, "AuthenticAMD", "Linux", "x86_64")[0]
    off, why = rule({}, "GenuineIntel", "Linux", "x86_64")
    assert not off and "GenuineIntel" in why
    assert not rule({}, "AuthenticAMD", "Darwin", "x86_64")[0]
    assert not rule({}, "", "Linux", "aarch64")[0]


def test_cpu_vendor_is_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: avx2\n")
    assert mkl_shim.cpu_vendor(info) == "AuthenticAMD"
    assert mkl_shim.cpu_vendor(tmp_path / "missing") == ""


@needs_cc
def test_the_shim_says_intel_and_is_built_once(tmp_path):
    path = cached(tmp_path)
    assert mkl_shim.ensure(path, CC) == ("", "")
    assert ctypes.CDLL(str(path)).mkl_serv_intel_cpu_true() == 1
    built = path.stat().st_mtime_ns
    assert mkl_shim.ensure(path, CC) == ("", "") and path.stat().st_mtime_ns == built
    # the library and its recorded sha256, no temporary; only this user can write any of it
    assert sorted(path.parent.iterdir()) == [path, mkl_shim.digest_path(path)]
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert "no C compiler" in mkl_shim.ensure(tmp_path / "other" / "x.so", "no-such-cc")[0]


def _world_writable(path: Path) -> str:
    path.chmod(0o666)
    return "writable by its group or others"


def _foreign_content(path: Path) -> str:
    path.write_bytes(b"\x7fELF someone else's library")
    return "not what lmforge built"


def _foreign_owner(path: Path) -> str:
    os.chown(path, 65534, 65534)
    return "owned by uid 65534"


@needs_cc
@pytest.mark.parametrize("tamper", [_world_writable, _foreign_content, _foreign_owner])
def test_a_cached_shim_lmforge_did_not_build_is_rebuilt_not_preloaded(tmp_path, tamper):
    if tamper is _foreign_owner and os.getuid() != 0:
        pytest.skip("giving a file to another user needs root")
    path = cached(tmp_path)
    assert mkl_shim.ensure(path, CC) == ("", "")
    reason = tamper(path)
    assert reason in mkl_shim.check(path)
    why_not, replaced = mkl_shim.ensure(path, CC)
    assert why_not == "" and reason in replaced and str(path) in replaced
    assert mkl_shim.check(path) == ""  # what is there now is lmforge's build, this user's alone
    assert path.stat().st_uid == os.getuid() and not path.stat().st_mode & 0o022


@needs_cc
def test_a_cache_folder_others_can_write_is_refused(tmp_path):
    path = cached(tmp_path)
    path.parent.mkdir(parents=True)
    path.parent.chmod(0o777)
    why_not, _ = mkl_shim.ensure(path, CC)
    assert f"{path.parent} is writable by its group or others" in why_not and "chmod" in why_not
    assert not path.exists()  # nothing built (or preloaded) there


def test_a_preload_the_loader_refused_is_off_with_the_reason(tmp_path):
    impostor = tmp_path / mkl_shim.NAME
    impostor.write_text("not a shared library\n")
    got = probe(tmp_path, LD_PRELOAD=str(impostor))
    assert got["preload"]  # LD_PRELOAD names it ...
    assert got["state"].startswith(  # ... but it is not in the process
        f"off (LD_PRELOAD names {impostor}, but the loader did not load it: not an ELF"
    )


@needs_cc
def test_a_loaded_shim_is_on(tmp_path):
    path = cached(tmp_path)
    assert mkl_shim.ensure(path, CC) == ("", "")
    got = probe(tmp_path, LD_PRELOAD=str(path))
    if got["branch"] is None:
        assert got["state"] == "off (the shim is loaded, but torch has no MKL here)"
    else:  # the shim is in the process and MKL takes its feature-based kernels
        assert got["state"].startswith("on (") and got["branch"] not in ("COMPATIBLE",)


@pytest.mark.skipif(not (AMD and CC), reason="needs an AMD CPU and a C compiler")
def test_a_cli_process_on_amd_gets_mkl_fast_kernels_and_the_same_results(tmp_path):
    fast = probe(tmp_path)
    assert fast["preload"] and fast["state"].startswith("on (AMD CPU")
    assert fast["branch"] in ("AVX2", "AVX512")  # MKL's feature-based kernels
    assert mkl_shim.check(cached(tmp_path)) == ""

    stock = probe(tmp_path, LMFORGE_MKL_SHIM="0")
    assert not stock["preload"] and stock["state"].startswith("off (LMFORGE_MKL_SHIM=0")
    assert stock["branch"] == "COMPATIBLE"  # what MKL gives an AMD CPU by itself
    import torch

    assert torch.allclose(
        torch.tensor(fast["product"]), torch.tensor(stock["product"]), rtol=1e-5, atol=1e-5
    )


@pytest.mark.skipif(not AMD, reason="needs an AMD CPU")
def test_without_a_compiler_the_command_runs_as_before_and_says_why(tmp_path):
    got = probe(tmp_path, CC="no-such-cc")
    assert not got["preload"]
    assert got["state"].startswith("off (no C compiler (no-such-cc)")
    assert not cached(tmp_path).exists()


@pytest.mark.skipif(not (AMD and CC), reason="needs an AMD CPU and a C compiler")
def test_a_cli_process_rebuilds_a_world_writable_shim_and_says_so(tmp_path):
    path = cached(tmp_path)
    assert mkl_shim.ensure(path, CC) == ("", "")
    path.chmod(0o666)
    got = probe(tmp_path)
    assert got["state"].startswith("on (AMD CPU") and "rebuilt the cached shim" in got["state"]
    assert "writable by its group or others" in got["state"] and mkl_shim.check(path) == ""


@pytest.mark.skipif(AMD, reason="an Intel (or other) CPU's behaviour")
def test_other_cpus_are_left_alone(tmp_path):
    got = probe(tmp_path)
    assert not got["preload"] and got["state"].startswith("off (")
    assert not (tmp_path / "cache").exists()
