"""Training memory per rank: single process, DDP, FSDP2 and FSDP2 + activation checkpointing.

For each mode (2 processes for the distributed ones, gloo on CPU) a ladder of Llama shapes of
growing width trains 2 optimizer steps each (AdamW, fp32 weights, bf16 autocast, batch 4 x 256
tokens per rank). The peak resident set of each rank above its pre-model baseline is divided by
the parameter count: bytes per parameter per rank (fp32 AdamW without sharding needs 16 for
weights, gradients and two moments, plus activations). "Largest within budget" is the largest
rung whose peak stays under ``--budget-mib`` per rank. The ladder climbs, so each rung's
``ru_maxrss`` reading is that rung's own peak.

    .venv/bin/python benchmarks/train_memory.py [--budget-mib 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = [256, 384, 512, 768]  # 4 layers each, heads of 64
MODES = {"single": ("single", 1, False), "ddp": ("ddp", 2, False), "fsdp": ("fsdp", 2, False), "fsdp+ac": ("fsdp", 2, True)}  # fmt: skip


def rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(parallel: str, ac: bool, out: Path) -> None:
    import numpy as np
    import torch

    from lmforge.config import ModelConfig, TrainConfig
    from lmforge.model import build_config, build_model, model_size
    from lmforge.train.distributed import init_distributed, shutdown
    from lmforge.train.loop import fit

    rt = init_distributed("cpu", 1)
    rows = []
    base = rss()
    for width in WIDTHS:
        shape = ModelConfig(n_layers=4, d_model=width, n_heads=width // 64, max_seq_len=256, vocab_size=8192)  # fmt: skip
        hf = build_config(shape)
        n = model_size(hf).n_params

        class Task:
            def batch(self, step, micro):
                g = torch.Generator().manual_seed(step * 10 + rt.rank)
                return torch.randint(0, 8192, (4, 256), generator=g)

            def loss(self, model, batch):
                return model(input_ids=batch, labels=batch).loss

            def tokens(self, batch):
                return batch.numel()

            def evaluate(self, model):
                return {}

        cfg = TrainConfig(max_steps=2, micro_batch_size=4, warmup_steps=1, parallel=parallel, activation_checkpointing=ac, precision="bf16", eval_every=0, ckpt_every=0, log_every=1)  # fmt: skip
        result = fit(build_model(hf, seed=0), Task(), cfg, rt, progress=False)
        del result
        peak = rss() - base
        rows.append({"d_model": width, "n_params": n, "peak_bytes": peak, "bytes_per_param": peak / n})  # fmt: skip
        _ = np  # numpy is imported for parity with training (its allocator is in the baseline)
    if rt.rank == 0:
        out.write_text(json.dumps(rows))
    shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget-mib", type=float, default=1024)
    parser.add_argument("--worker", nargs=3, metavar=("PARALLEL", "AC", "OUT"))
    args = parser.parse_args()
    if args.worker:
        parallel, ac, out = args.worker
        worker(parallel, ac == "1", Path(out))
        return
    torchrun = str(Path(sys.executable).parent / "torchrun")
    results = {}
    for name, (parallel, nproc, ac) in MODES.items():
        out = ROOT / "benchmarks" / "work" / f"memory-{name.replace('+', '-')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        worker_args = [__file__, "--worker", parallel, "1" if ac else "0", str(out)]
        if nproc == 1:
            cmd = [sys.executable, *worker_args]
        else:
            cmd = [torchrun, "--standalone", f"--nproc-per-node={nproc}", *worker_args]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        rows = json.loads(out.read_text())
        fits = [r for r in rows if r["peak_bytes"] <= args.budget_mib * 2**20]
        results[name] = {
            "ranks": nproc,
            "ladder": rows,
            "largest_within_budget": max(fits, key=lambda r: r["n_params"]) if fits else None,
        }
        print(name, json.dumps(results[name]["ladder"]), flush=True)
    payload = {"budget_mib_per_rank": args.budget_mib, "widths": WIDTHS, "results": results}
    (ROOT / "benchmarks" / "results" / "train_memory.json").write_text(json.dumps(payload, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
