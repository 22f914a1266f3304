"""The default run's model against the previous default, step for step in one process.

One training step (8 x 256 tokens, AdamW, clipping) of the ``cpu-tiny`` preset and of the shape
it replaced (4 layers, width 192, 6 heads), alternated step by step so that load on a shared
machine hits both alike; one thread, as each of the default run's two replicas has on 2 cores.
fp32 always (what an AVX2-only CPU trains in), bf16 too where this CPU has it natively. Writes
``benchmarks/results/default_shape.json``; ``docs/benchmarks/default_run.md`` quotes it.

    .venv/bin/python benchmarks/default_shape.py [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import machine  # benchmarks/machine.py (this script's folder): what the figures ran on
import torch

from lmforge.config import ModelConfig
from lmforge.config.model import load_presets
from lmforge.model import build_config, build_model, model_size
from lmforge.train.precision import resolve

ROOT = Path(__file__).resolve().parents[1]
VOCAB, SEQ, BATCH = 4096, 256, 8
PREVIOUS = {"n_layers": 4, "d_model": 192, "n_heads": 6, "max_seq_len": SEQ}


def trainer(shape: dict, precision: str):
    cfg = build_config(ModelConfig(**{**shape, "vocab_size": VOCAB}))
    model = build_model(cfg, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randint(0, VOCAB, (BATCH, SEQ))
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> float:
        start = time.perf_counter()
        with amp:
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return step, model_size(cfg, SEQ)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    current = load_presets()["cpu-tiny"]
    shapes = {"previous": PREVIOUS, "cpu-tiny": current}
    precisions = ["fp32"]
    if resolve("auto", torch.device("cpu")).name == "bf16":
        precisions.append("bf16")
    results = {}
    for precision in precisions:
        steps, sizes = {}, {}
        for name, shape in shapes.items():
            steps[name], sizes[name] = trainer(shape, precision)
            steps[name]()  # warm-up: allocations, kernel choice
            steps[name]()
        times: dict[str, list[float]] = {name: [] for name in shapes}
        for _ in range(args.steps):
            for name in shapes:
                times[name].append(steps[name]())
        ratios = [p / c for p, c in zip(times["previous"], times["cpu-tiny"], strict=True)]
        results[precision] = {
            "step_s": {name: statistics.median(t) for name, t in times.items()},
            "previous_over_current": statistics.median(ratios),
            "flops_ratio": sizes["previous"].flops_per_token / sizes["cpu-tiny"].flops_per_token,
        }
        print(precision, json.dumps(results[precision]), flush=True)
    payload = {
        "machine": machine.describe(),
        "threads": 1,
        "shapes": shapes,
        "params": {name: trainer(s, "fp32")[1].n_params for name, s in shapes.items()},
        "steps": args.steps,
        "results": results,
    }
    out = ROOT / "benchmarks" / "results" / "default_shape.json"
    out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
