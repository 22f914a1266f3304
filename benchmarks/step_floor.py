"""Where an eager training step of the reference shape spends its time, and so the most that any
change to the loop, the loss or the element-wise ops could gain over another trainer that runs
the same model.

The step is lmforge's own (``fit`` over ``LMTask``: forward with the loss, backward, clipping,
AdamW), at the shape of ``train_throughput.py``, in a process set up as the lmforge CLI sets up
its own (``lmforge.mkl_shim``). A torch profile of its timed steps sums each
op's own time into: the matmuls (``aten::mm``/``addmm``/``bmm``), the attention kernel, the
loss's log-softmax and NLL, AdamW, the Python between ops (the loop's and the model's), and
everything else (RMSNorm, RoPE, SiLU, residual adds, copies, gradient clipping). Two bounds follow:

- ``bound_matmuls_only``: the speed-up if every op but the matmuls took no time;
- ``bound_matmuls_and_attention``: the same, keeping the attention kernel too. This is what a
  loop, a fused loss or fused element-wise ops can reach at most against a trainer of the same
  model; anything beyond it needs fewer or faster matmuls.

The matmuls' achieved rate (their analytic FLOPs over their measured time) is set against the
matmul peak measured in the same run (``lmforge.train.flops.measure_matmul_peak``).

    .venv/bin/python benchmarks/step_floor.py [--steps 4 --warmup 2 --precision fp32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import machine  # benchmarks/machine.py (this script's folder): what the figures ran on
import torch
from torch.profiler import ProfilerActivity, profile, schedule
from train_throughput import BATCH, SEQ, SHAPE, lmforge_setup

from lmforge import mkl_shim
from lmforge.allocator import keep_freed_blocks
from lmforge.machine import enter as enter_machine
from lmforge.model import build_config, model_size
from lmforge.train.data import BlockDataset
from lmforge.train.flops import measure_matmul_peak, precision_dtype
from lmforge.train.loop import fit
from lmforge.train.synthetic import write_synthetic_tokenized

ROOT = Path(__file__).resolve().parents[1]
MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def category(op: str) -> str:
    if op.startswith("ProfilerStep"):
        return "python"  # the step's own time outside every op: the loop's and model's Python
    if op in MATMULS:
        return "matmul"
    if "scaled_dot_product" in op:
        return "attention"
    if "log_softmax" in op or "nll_loss" in op:
        return "loss"
    if "adam" in op:
        return "optimizer"
    return "other"


def train(ds: BlockDataset, precision: str, steps: int, warmup: int, prof=None) -> float:
    """Seconds per timed step of lmforge's loop (the profiler, if given, steps with it)."""
    cfg, rt, model, task = lmforge_setup(ds, precision, warmup + steps, log_every=1)
    stamps: list[float] = []

    def on_log(step: int, row: dict) -> None:
        stamps.append(time.perf_counter())
        if prof is not None:
            prof.step()

    fit(model, task, cfg, rt, progress=False, on_log=on_log)
    return (stamps[-1] - stamps[warmup - 1]) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = parser.parse_args()
    enter_machine()  # the process the lmforge CLI would run (MKL's fast path on AMD)
    heap = keep_freed_blocks()  # as lmforge's training processes run (benchmarks/allocator.py)
    size = model_size(build_config(SHAPE), SEQ)
    layers, width = SHAPE.n_layers, SHAPE.d_model
    attention_flops = 12 * layers * width * SEQ  # per token, PaLM's count (no causal saving)
    matmul_flops = size.flops_per_token - attention_flops
    tokens = BATCH * SEQ
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_tokenized(
            Path(tmp) / "tok", vocab_size=SHAPE.vocab_size, block_size=SEQ, n_blocks={"train": 256}
        )
        ds = BlockDataset(data / "blocks", "train")
        peak = measure_matmul_peak(torch.device("cpu"), precision_dtype(args.precision), 1.0)
        step_s = train(ds, args.precision, args.steps, args.warmup)
        plan = schedule(wait=0, warmup=args.warmup, active=args.steps, repeat=1)
        with profile(activities=[ProfilerActivity.CPU], schedule=plan) as prof:
            train(ds, args.precision, args.steps, args.warmup, prof)
    own: dict[str, float] = defaultdict(float)
    ops: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6 / args.steps
        own[category(event.key)] += seconds
        ops[event.key] += seconds
    profiled = sum(own.values())
    share = {name: own[name] / profiled for name in sorted(own)}
    matmul_rate = matmul_flops * tokens / own["matmul"]
    payload = {
        "shape": {
            "n_layers": layers,
            "d_model": width,
            "n_heads": SHAPE.n_heads,
            "seq_len": SEQ,
            "vocab": SHAPE.vocab_size,
            "batch": BATCH,
        },
        "machine": machine.describe(),
        "precision": args.precision,
        "mkl_shim": mkl_shim.state(),
        "heap": heap,
        "timed_steps": args.steps,
        "step_seconds": step_s,
        "tokens_per_s": tokens / step_s,
        "profiled_op_seconds_per_step": profiled,
        "share": share,
        "top_ops": {k: v / profiled for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:12]},
        "matmul_peak_gflops": peak / 1e9,
        "matmul_gflops": matmul_rate / 1e9,
        "matmul_efficiency": matmul_rate / peak,
        "bound_matmuls_only": 1 / share["matmul"],
        "bound_matmuls_and_attention": 1 / (share["matmul"] + share.get("attention", 0.0)),
    }
    machine.record_by_class(ROOT / "benchmarks" / "results" / "step_floor.json", payload)
    print(json.dumps({k: v for k, v in payload.items() if k not in ("machine", "heap")}, indent=2))


if __name__ == "__main__":
    main()
