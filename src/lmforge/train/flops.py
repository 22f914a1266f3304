"""The matmul peak of this device at a precision, measured, for model FLOPs utilisation (MFU).

MFU = achieved model FLOPs per second / peak. On CPUs there is no datasheet number that holds
for a container's share of cores, so the peak is what a large square matmul reaches here, now,
with the same threads and dtype as training.
"""

from __future__ import annotations

import time

import torch


def measure_matmul_peak(
    device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 0.5
) -> float:
    """FLOP/s of repeated ``n x n @ n x n`` matmuls (n = 1024 on CPU, 8192 on GPU)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):  # warm-up: thread pools, kernel selection
        a @ b
    sync()
    iters, start = 0, time.perf_counter()
    while True:
        a @ b
        iters += 1
        if iters % 4 == 0:
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return 2 * n**3 * iters / elapsed


def precision_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32
