"""glibc's heap kept (``lmforge.allocator``) against its defaults, on the default run's step.

One training step of the ``cpu-tiny`` preset (8 x 256 tokens, vocabulary 4096, AdamW, clipping)
on one thread, as each of the default run's two replicas runs it. Each measurement is a fresh
process (glibc's thresholds cannot be undone inside one), with ``LMFORGE_KEEP_HEAP=0`` or not;
the two alternate round by round so that load on a shared machine hits both alike, and the
figure is the median of the per-round ratios. Minor page faults per step come from getrusage.
Writes ``benchmarks/results/allocator.json``; ``docs/benchmarks/allocator.md`` quotes it.

    .venv/bin/python benchmarks/allocator.py [--rounds 6 --steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import machine  # benchmarks/machine.py (this script's folder): what the figures ran on

ROOT = Path(__file__).resolve().parents[1]
VOCAB, SEQ, BATCH = 4096, 256, 8
NAMES = {True: "kept", False: "default"}


def measure(precision: str, steps: int) -> dict:
    """In this (fresh) process: median step time and minor faults per step."""
    import torch

    from lmforge.allocator import keep_freed_blocks
    from lmforge.config import ModelConfig
    from lmforge.config.model import load_presets
    from lmforge.model import build_config, build_model

    heap = keep_freed_blocks()
    torch.set_num_threads(1)
    cfg = build_config(ModelConfig(**{**load_presets()["cpu-tiny"], "vocab_size": VOCAB}))
    model = build_model(cfg, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randint(0, VOCAB, (BATCH, SEQ))
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    times, faults = [], 0
    for i in range(steps + 2):  # two warm-up steps: kernel choice, first allocations
        start_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        with amp:
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - start)
            faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start_faults
    return {"heap": heap, "step_s": statistics.median(times), "faults_per_step": faults / steps}


def child(precision: str, steps: int, keep: bool) -> dict:
    env = {**os.environ, "LMFORGE_KEEP_HEAP": "1" if keep else "0", "OMP_NUM_THREADS": "1"}
    for key in [k for k in env if k.startswith("MALLOC_")]:
        del env[key]
    cmd = [sys.executable, __file__, "--child", precision, "--steps", str(steps)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--child", choices=["fp32", "bf16"])
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps)))
        return
    from lmforge.train.precision import resolve

    precisions = ["fp32"]
    if resolve("auto", __import__("torch").device("cpu")).name == "bf16":
        precisions.append("bf16")
    results = {}
    for precision in precisions:
        rows = []
        for r in range(args.rounds):
            order = (True, False) if r % 2 else (False, True)
            row = {NAMES[keep]: child(precision, args.steps, keep) for keep in order}
            rows.append(row)
            print(precision, json.dumps(row), flush=True)
        ratios = [row["default"]["step_s"] / row["kept"]["step_s"] for row in rows]
        results[precision] = {
            "step_s": {k: statistics.median(row[k]["step_s"] for row in rows) for k in rows[0]},
            "faults_per_step": {
                k: statistics.median(row[k]["faults_per_step"] for row in rows) for k in rows[0]
            },
            "default_over_kept": statistics.median(ratios),
            "ratios": ratios,
        }
        print(precision, json.dumps(results[precision]), flush=True)
    payload = {
        "machine": machine.describe(),
        "threads": 1,
        "rounds": args.rounds,
        "steps": args.steps,
        "results": results,
    }
    out = ROOT / "benchmarks" / "results" / "allocator.json"
    out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
