"""precision: auto resolves to bf16 only where the device computes it natively."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmforge.train.flops import measure_matmul_peak, peak_flops, precision_dtype
from lmforge.train.precision import (
    DeviceFacts,
    read_cpu_flags,
    resolve,
    resolve_precision,
)

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
ZEN4 = AVX2 | {"avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}
SAPPHIRE_RAPIDS = ZEN4 | {"amx_tile", "amx_bf16", "amx_int8"}


def cpu(flags, isa=None):
    return DeviceFacts("cpu", frozenset(flags), isa)


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (cpu(AVX2), "fp32"),  # a typical CI runner: bf16 would be emulated
        (cpu(AVX2 | {"avx512f", "avx512bw"}), "fp32"),  # AVX512 without BF16
        (cpu(ZEN4), "bf16"),
        (cpu(SAPPHIRE_RAPIDS - {"avx512_bf16"}), "bf16"),  # AMX-BF16 alone is native too
        (cpu(ZEN4, "AVX2"), "fp32"),  # oneDNN capped below its bf16 kernels
        (cpu(ZEN4, "avx512_core"), "fp32"),  # names are case-insensitive, as oneDNN reads them
        (cpu(ZEN4, "AVX512_CORE_BF16"), "bf16"),
        (cpu(SAPPHIRE_RAPIDS, "AVX512_CORE_AMX"), "bf16"),
        (cpu(ZEN4, "ALL"), "bf16"),
        (cpu(ZEN4, "NOT_AN_ISA"), "fp32"),  # unknown cap: do not bet on bf16
        (DeviceFacts("cuda", cuda_capability=(9, 0), cuda_name="NVIDIA H200"), "bf16"),
        (DeviceFacts("cuda", cuda_capability=(8, 0)), "bf16"),
        (DeviceFacts("cuda", cuda_capability=(7, 0), cuda_name="Tesla V100"), "fp32"),
    ],
)
def test_auto_is_bf16_only_where_native(facts, expected):
    chosen = resolve_precision("auto", facts)
    assert chosen.name == expected
    assert chosen.native == (expected == "bf16")
    assert chosen.reason.startswith(f"auto -> {expected}: ")
    assert chosen.dtype == (torch.bfloat16 if expected == "bf16" else torch.float32)


def test_reason_names_the_cause():
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in resolve_precision("auto", cpu(ZEN4, "AVX2")).reason
    assert "neither AVX512-BF16 nor AMX" in resolve_precision("auto", cpu(AVX2)).reason
    assert "7.0" in resolve_precision("auto", DeviceFacts("cuda", cuda_capability=(7, 0))).reason


@pytest.mark.parametrize("facts", [cpu(AVX2), cpu(ZEN4), cpu(ZEN4, "AVX2")])
def test_explicit_choice_is_honoured(facts):
    assert resolve_precision("fp32", facts).name == "fp32"
    bf16 = resolve_precision("bf16", facts)  # even where it is slow: the user asked
    assert bf16.name == "bf16" and bf16.autocast
    with pytest.raises(ValueError, match="fp8"):
        resolve_precision("fp8", facts)


def test_cpu_flags_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512_bf16\n\n")
    assert read_cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}


def test_this_machine_agrees_with_proc_cpuinfo(monkeypatch):
    """The real call on this machine: auto follows /proc/cpuinfo's bf16 flags."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo")
    from lmforge.train import precision

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    text = cpuinfo.read_text()
    native = "avx512_bf16" in text or "amx_bf16" in text
    precision._resolve.cache_clear()  # resolved before under another ONEDNN_MAX_CPU_ISA
    try:
        chosen = resolve("auto", torch.device("cpu"))
    finally:
        precision._resolve.cache_clear()
    assert chosen.name == ("bf16" if native else "fp32")
    assert chosen.native == native


def test_explicit_bf16_without_native_support_warns_with_the_ratio(monkeypatch, caplog):
    from lmforge.train import precision

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # read by the resolver; oneDNN is loaded
    precision._resolve.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="lmforge.train.precision"):
            chosen = resolve("bf16", torch.device("cpu"))
    finally:
        precision._resolve.cache_clear()
    assert chosen.name == "bf16" and not chosen.native
    message = caplog.text
    assert "without native bf16" in message and "the speed of fp32" in message


def test_auto_must_be_resolved_before_picking_a_dtype():
    with pytest.raises(ValueError, match="resolved first"):
        precision_dtype("auto")
    assert precision_dtype("bf16") == torch.bfloat16


def test_cpu_peak_is_measured_and_plausible():
    peak = peak_flops(torch.device("cpu"), torch.float32, seconds=0.1)
    assert 1e8 < peak < 1e14  # 0.1 GFLOP/s .. 100 TFLOP/s: a number, not a unit slip
    assert measure_matmul_peak(torch.device("cpu"), torch.float32, 0.05) > 0


@pytest.mark.parametrize(
    ("name", "bf16"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),  # SXM
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA H200 NVL", 835e12),
    ],
)
def test_each_card_gets_its_own_datasheet_peak(name, bf16):
    """A fragment match gave every H100 the SXM peak: a PCIe card's MFU read 24% too low."""
    from lmforge.train.flops import datasheet_peak

    assert datasheet_peak(name, torch.bfloat16) == bf16
    assert datasheet_peak(name, torch.float32) < bf16 / 10


def test_an_unknown_card_has_no_datasheet_peak_and_is_measured():
    from lmforge.train.flops import datasheet_peak

    assert datasheet_peak("NVIDIA H100 SXM5 96GB", torch.bfloat16) is None
    assert datasheet_peak("H100", torch.bfloat16) is None
