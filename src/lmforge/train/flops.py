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

# Dense (no sparsity) peak FLOP/s by GPU name fragment: (bf16, fp32). Datasheet values.
GPU_PEAKS = {
    "H200": (989e12, 67e12),
    "H100": (989e12, 67e12),  # SXM; the PCIe card is lower and is measured instead
    "A100": (312e12, 19.5e12),
}


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
        name = torch.cuda.get_device_name(device)
        for key, (bf16, fp32) in GPU_PEAKS.items():
            if key in name:
                return bf16 if dtype == torch.bfloat16 else fp32
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
