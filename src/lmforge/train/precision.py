"""Which precision training computes in: ``auto`` resolved against what the device does natively.

``auto`` (the default) is bf16 where the device computes it natively, else fp32:

- CUDA: bf16 from compute capability 8.0 (Ampere) on; older GPUs emulate it;
- CPU: bf16 when oneDNN has native bf16 kernels, i.e. the CPU has AVX512-BF16 or AMX-BF16 *and*
  ``ONEDNN_MAX_CPU_ISA`` (if set) does not cap oneDNN below ``AVX512_CORE_BF16``. Without them
  (an AVX2-only CI runner, a laptop) a bf16 matmul runs ~50-100x slower than fp32 here.

An explicit ``bf16`` on a device without native support still runs (the user asked), with one
warning that gives the measured bf16/fp32 matmul speed ratio. ``fp32`` is always honoured.

``resolve_precision`` is the pure rule (facts in, decision out; tests inject the facts);
``resolve(requested, device)`` gathers this process's facts once and is what the loop, FSDP's
mixed-precision policy, the MFU peak and the stages' metrics all use, so they cannot disagree.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.cores import cpuinfo_field

log = logging.getLogger(__name__)

# oneDNN's ISA levels, lowest first, as ONEDNN_MAX_CPU_ISA names them (oneDNN 3.x; the AVX10
# names alias the AVX512_CORE_FP16/AMX ones). Native bf16 dot products start at AVX512_CORE_BF16.
ONEDNN_ISA_ORDER = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16",
    "AVX512_CORE_FP16",
    "AVX10_1_512",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX_FP16",
    "AVX10_1_512_AMX_FP16",
    "AVX10_2_512",
    "AVX10_2_512_AMX_2",
)
_BF16_ISA = ONEDNN_ISA_ORDER.index("AVX512_CORE_BF16")
# /proc/cpuinfo flags that give oneDNN native bf16 compute.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@dataclass(frozen=True)
class DeviceFacts:
    """What the decision depends on; ``device_facts`` reads them, tests make them up."""

    device_type: str  # "cpu" | "cuda"
    cpu_flags: frozenset[str] = frozenset()  # /proc/cpuinfo "flags" of this CPU
    onednn_max_isa: str | None = None  # the ONEDNN_MAX_CPU_ISA environment variable
    cuda_capability: tuple[int, int] | None = None  # (major, minor) of the training GPU
    cuda_name: str = ""


@dataclass(frozen=True)
class Precision:
    requested: str  # what the config said: auto | fp32 | bf16
    name: str  # what training computes in: fp32 | bf16
    native: bool  # the device computes bf16 natively
    reason: str  # one sentence, recorded in metrics.json and MLflow

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    @property
    def autocast(self) -> bool:
        return self.name == "bf16"


def cpu_native_bf16(flags: frozenset[str], onednn_max_isa: str | None) -> tuple[bool, str]:
    """Whether oneDNN computes bf16 natively on a CPU with ``flags``, and why (or why not)."""
    have = sorted(BF16_CPU_FLAGS & flags)
    if not have:
        return False, "CPU has neither AVX512-BF16 nor AMX-BF16 (bf16 would be emulated)"
    cap = (onednn_max_isa or "").strip().upper()
    if cap and cap not in ("ALL", "DEFAULT"):
        if cap not in ONEDNN_ISA_ORDER:
            return False, f"ONEDNN_MAX_CPU_ISA={cap} is not a oneDNN ISA name known here"
        if ONEDNN_ISA_ORDER.index(cap) < _BF16_ISA:
            capped = f"ONEDNN_MAX_CPU_ISA={cap} caps oneDNN below it"
            return False, f"CPU has {'+'.join(have)} but {capped}"
    return True, f"CPU has {'+'.join(have)} (oneDNN native bf16)"


def resolve_precision(requested: str, facts: DeviceFacts) -> Precision:
    """The pure rule: ``requested`` (auto | fp32 | bf16) on a device with ``facts``."""
    if requested not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision={requested!r}: expected auto, fp32 or bf16")
    if facts.device_type == "cuda":
        cap = facts.cuda_capability
        native = cap is not None and cap >= (8, 0)
        gpu = facts.cuda_name or "GPU"
        why = (
            f"{gpu} (compute capability {cap[0]}.{cap[1]}) "
            + ("computes bf16 natively" if native else "has no native bf16 (needs 8.0+)")
            if cap
            else "no CUDA capability known"
        )
    elif facts.device_type == "cpu":
        native, why = cpu_native_bf16(facts.cpu_flags, facts.onednn_max_isa)
    else:
        native, why = False, f"device {facts.device_type}: no native bf16 known"
    if requested == "fp32":
        return Precision(requested, "fp32", native, f"fp32 as configured; {why}")
    if requested == "bf16":
        return Precision(requested, "bf16", native, f"bf16 as configured; {why}")
    name = "bf16" if native else "fp32"
    return Precision(requested, name, native, f"auto -> {name}: {why}")


def read_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's flags (Linux); elsewhere torch's own CPU probe for the bf16 ones."""
    listed = cpuinfo_field("flags", cpuinfo) or cpuinfo_field("Features", cpuinfo)  # x86, ARM
    if listed:
        return frozenset(listed.split())
    flags = set()
    if platform.machine().lower() in ("x86_64", "amd64"):
        probe = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")().upper()
        flags |= {"avx2"} if "AVX2" in probe else set()
        flags |= {"avx512f"} if "AVX512" in probe else set()
    return frozenset(flags)


def device_facts(device: torch.device) -> DeviceFacts:
    if device.type == "cuda":
        return DeviceFacts(
            "cuda",
            cuda_capability=tuple(torch.cuda.get_device_capability(device)),
            cuda_name=torch.cuda.get_device_name(device),
        )
    return DeviceFacts(device.type, read_cpu_flags(), os.environ.get("ONEDNN_MAX_CPU_ISA"))


@functools.cache
def _resolve(requested: str, device_type: str, index: int | None) -> Precision:
    device = torch.device(device_type, index) if index is not None else torch.device(device_type)
    chosen = resolve_precision(requested, device_facts(device))
    if chosen.name == "bf16" and not chosen.native:
        from lmforge.train.flops import bf16_speed_ratio

        ratio = bf16_speed_ratio(device)
        log.warning(
            "precision=bf16 on a device without native bf16 (%s): a bf16 matmul measured %.3gx "
            "the speed of fp32 here; training will be slower. Set precision: auto (or fp32).",
            chosen.reason,
            ratio,
        )
    return chosen


def resolve(requested: str, device: torch.device) -> Precision:
    """``requested`` resolved on this process's ``device`` (facts read and warned about once)."""
    return _resolve(requested, device.type, device.index)


_announced: set[Precision] = set()


def announce(chosen: Precision) -> None:
    """Print the decision once per process (pretrain and finetune's two fits share one line)."""
    if chosen not in _announced:
        _announced.add(chosen)
        print(f"precision: {chosen.name} ({chosen.reason})", file=sys.stderr, flush=True)
