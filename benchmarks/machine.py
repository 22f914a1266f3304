"""What a benchmark figure was measured on, recorded next to it (every benchmark's JSON has it).

A bf16 figure from a CPU with AVX512-BF16 says nothing about an AVX2-only runner (there bf16 is
~50-100x slower than fp32), so each result names the CPU model, its vector capability, the
oneDNN cap, the threads and the torch version.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

CAPABILITIES = (
    ("AVX2", "avx2"),
    ("AVX512", "avx512f"),
    ("AVX512-BF16", "avx512_bf16"),
    ("AMX", "amx_bf16"),
)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    from lmforge.cores import cpuinfo_field

    return cpuinfo_field("model name", cpuinfo) or platform.processor() or platform.machine()


def machine_class(capabilities: list[str]) -> str:
    """The short name the docs' tables use: the best bf16-relevant capability."""
    for name in ("AMX", "AVX512-BF16", "AVX512", "AVX2"):
        if name in capabilities:
            return f"{name} CPU" if name != "AVX512-BF16" else "AVX512-BF16 CPU"
    return "CPU"


def describe(threads: int | None = None) -> dict[str, Any]:
    """The machine record: CPU model and capability, cores, threads, torch, any GPU."""
    import torch

    from lmforge.cores import usable_cores
    from lmforge.train.precision import read_cpu_flags, resolve

    flags = read_cpu_flags()
    caps = [name for name, flag in CAPABILITIES if flag in flags]
    record = {
        "cpu_model": cpu_model(),
        "capabilities": caps,
        "machine_class": machine_class(caps),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "cores": usable_cores(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "torch": torch.__version__,
        "auto_precision": resolve("auto", torch.device("cpu")).name,
    }
    cap = record["onednn_max_cpu_isa"]
    if cap and record["auto_precision"] == "fp32" and "AVX512-BF16" in caps:
        record["machine_class"] = f"{cap.upper()}-capped CPU"  # emulates an older CPU class
    if torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(0)
        record["gpus"] = torch.cuda.device_count()
    return record


def line(record: dict[str, Any]) -> str:
    """One sentence for a docs table: ``Machine: ...``."""
    cap = record.get("onednn_max_cpu_isa")
    isa = f", ONEDNN_MAX_CPU_ISA={cap}" if cap else ""
    gpu = f", {record['gpus']}x {record['gpu']}" if record.get("gpu") else ""
    return (
        f"Machine: {record['machine_class']} ({record['cpu_model']}; "
        f"{', '.join(record['capabilities']) or 'no AVX2'}{isa}), {record['cores']} cores, "
        f"{record['threads']} threads, torch {record['torch']}{gpu}."
    )


def record_by_class(path: Path, payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Write ``payload`` (which has a ``machine`` record) into ``path`` under its machine class,
    keeping what other classes measured, and return every class's payload.

    One file holds one run per machine class: an AVX2-only run must not erase the AVX512-BF16
    figures the docs also cite (a file from before this layout becomes its class's entry).
    """
    runs: dict[str, dict[str, Any]] = {}
    if path.is_file():
        before = json.loads(path.read_text())
        if "by_machine_class" in before:
            runs = before["by_machine_class"]
        elif isinstance(before.get("machine"), dict):
            runs = {before["machine"]["machine_class"]: before}
    runs[payload["machine"]["machine_class"]] = payload
    runs = dict(sorted(runs.items()))
    path.write_text(json.dumps({"by_machine_class": runs}, indent=2) + "\n")
    return runs


if __name__ == "__main__":
    print(line(describe()))
