"""mkl_shim: a process the CLI starts on an AMD CPU gets MKL's fast kernels, and nothing else
changes: not the results, not a machine without a compiler, not an Intel CPU."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge import mkl_shim

AMD = mkl_shim.cpu_vendor() == "AuthenticAMD"
CC = shutil.which(os.environ.get("CC") or "cc")

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


@pytest.mark.skipif(CC is None, reason="no C compiler on this machine")
def test_the_shim_says_intel_and_is_built_once(tmp_path):
    path = tmp_path / mkl_shim.NAME
    assert mkl_shim.build(path, CC) == ""
    assert ctypes.CDLL(str(path)).mkl_serv_intel_cpu_true() == 1
    built = path.stat().st_mtime_ns
    assert mkl_shim.build(path, CC) == "" and path.stat().st_mtime_ns == built
    assert list(tmp_path.iterdir()) == [path]  # no temporary left beside it
    assert "no C compiler" in mkl_shim.build(tmp_path / "other.so", "no-such-cc")


@pytest.mark.skipif(not (AMD and CC), reason="needs an AMD CPU and a C compiler")
def test_a_cli_process_on_amd_gets_mkl_fast_kernels_and_the_same_results(tmp_path):
    fast = probe(tmp_path)
    assert fast["preload"] and fast["state"].startswith("on (AMD CPU")
    assert fast["branch"] in ("AVX2", "AVX512")  # MKL's feature-based kernels
    assert (tmp_path / "cache" / "lmforge" / mkl_shim.NAME).is_file()

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
    assert not (tmp_path / "cache" / "lmforge" / mkl_shim.NAME).exists()


@pytest.mark.skipif(AMD, reason="an Intel (or other) CPU's behaviour")
def test_other_cpus_are_left_alone(tmp_path):
    got = probe(tmp_path)
    assert not got["preload"] and got["state"].startswith("off (")
    assert not (tmp_path / "cache").exists()
