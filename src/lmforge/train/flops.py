"""The matmul peak of this device at a precision, for model FLOPs utilisation (MFU).

MFU = achieved model FLOPs per second / peak. On a GPU the peak is the datasheet's dense bf16
(or tf32-less fp32) figure where the GPU is known, else measured. On a CPU no datasheet number
holds for a container's share of cores, so the peak is measured here, now, with the same threads
and dtype as training: the *best* of several matmul sizes and repeats, because one sample on a
shared machine can be slowed by a neighbour and an underestimated peak reads as MFU above 100%.
"""

from __future__ import annotations

import time

import torch

# Dense (no sparsity) peak FLOP/s per card, (bf16, fp32), from NVIDIA's datasheets, keyed by the
# exact name torch.cuda.get_device_name reports. The form factors of one chip differ by up to 25%
# (H100 SXM 989 TFLOP/s bf16, NVL 835, PCIe 756): a fragment match ("H100") would give a PCIe
# card the SXM peak and overstate nothing but understate its MFU. An unknown name is measured.
GPU_PEAKS = {
    "NVIDIA H100 80GB HBM3": (989e12, 67e12),  # SXM5
    "NVIDIA H100 NVL": (835e12, 60e12),
    "NVIDIA H100 PCIe": (756e12, 51e12),
    "NVIDIA H200": (989e12, 67e12),  # SXM
    "NVIDIA H200 NVL": (835e12, 60e12),
    "NVIDIA GH200 480GB": (989e12, 67e12),
    "NVIDIA A100-SXM4-80GB": (312e12, 19.5e12),
    "NVIDIA A100-SXM4-40GB": (312e12, 19.5e12),
    "NVIDIA A100 80GB PCIe": (312e12, 19.5e12),
    "NVIDIA A100-PCIE-40GB": (312e12, 19.5e12),
}


def datasheet_peak(name: str, dtype: torch.dtype) -> float | None:
    """The datasheet dense peak of the card called exactly ``name``; None for an unknown card."""
    peaks = GPU_PEAKS.get(" ".join(name.split()))
    if peaks is None:
        return None
    return peaks[0] if dtype == torch.bfloat16 else peaks[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, seconds: float) -> float:
    """FLOP/s of the fastest of repeated ``n x n @ n x n`` matmuls over about ``seconds``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up: thread pools, kernel selection
    _sync(device)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        a @ b
        _sync(device)
        now = time.perf_counter()
        best = min(best, now - start)
        if now >= deadline:
            return 2 * n**3 / best


def measure_matmul_peak(
    device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 0.5
) -> float:
    """The best FLOP/s over a few square sizes, each timed matmul by matmul (best of repeats)."""
    sizes = (4096, 8192) if device.type == "cuda" else (512, 1024, 2048)
    return max(matmul_rate(device, dtype, n, seconds / len(sizes)) for n in sizes)


def peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """The MFU denominator: a known GPU's datasheet dense peak, else the measured peak."""
    if device.type == "cuda":
        known = datasheet_peak(torch.cuda.get_device_name(device), dtype)
        if known is not None:
            return known
    return measure_matmul_peak(device, dtype, seconds)


def bf16_speed_ratio(device: torch.device, n: int = 256) -> float:
    """bf16 matmul speed / fp32 matmul speed here (small and quick: an emulated bf16 matmul
    can be 100x slower than fp32, so a large one would take seconds)."""
    fp32 = matmul_rate(device, torch.float32, n, 0.05)
    bf16 = matmul_rate(device, torch.bfloat16, n, 0.05)
    return bf16 / fp32


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype of a *resolved* precision name (``lmforge.train.precision.resolve`` first)."""
    if precision == "auto":
        raise ValueError("precision 'auto' must be resolved first (lmforge.train.precision)")
    return torch.bfloat16 if precision == "bf16" else torch.float32
