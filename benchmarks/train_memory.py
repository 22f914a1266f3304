"""Training memory per rank: single process, DDP, FSDP2 and FSDP2 + activation checkpointing.

For each mode (2 processes for the distributed ones, gloo on CPU) a ladder of Llama shapes of
growing width trains 2 optimizer steps each (AdamW, fp32 weights, bf16 autocast, batch 4 x 256
tokens per rank), the model built as pretraining builds it (under FSDP2, ranks 1.. on the meta
device: ``meta_init``). Each (mode, width) rung runs in fresh processes, and every mode gets the
same fixed glibc thresholds (``MALLOC_ENV``): a freed tensor of 1 MiB or more goes back to the
OS, so the resident set follows live memory instead of what earlier rungs or malloc's dynamic
mmap threshold kept. Reported: the peak resident set of each rank above its own pre-model
baseline, the largest over ranks, divided by the parameter count: bytes per parameter per rank
(fp32 AdamW without sharding needs 16 for weights, gradients and two moments, plus
activations). "Largest within budget" is the largest rung whose peak stays under
``--budget-mib`` per rank.

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
WIDTHS = [256, 384, 512, 768, 1024]  # 4 layers each, heads of 64
MODES = {
    "single": ("single", 1, False),
    "ddp": ("ddp", 2, False),
    "fsdp": ("fsdp", 2, False),
    "fsdp+ac": ("fsdp", 2, True),
}
# Fixed thresholds (no dynamic mmap threshold): large frees return to the OS in every mode alike.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**20), "MALLOC_TRIM_THRESHOLD_": str(2**20)}


def rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def worker(parallel: str, ac: bool, width: int, out: Path) -> None:
    import torch
    import torch.distributed as dist

    from lmforge.config import ModelConfig, TrainConfig
    from lmforge.model import build_config, build_model, model_size
    from lmforge.train.distributed import init_distributed, shutdown
    from lmforge.train.loop import fit
    from lmforge.train.parallel import meta_init

    rt = init_distributed("cpu", 1)
    shape = ModelConfig(
        n_layers=4, d_model=width, n_heads=width // 64, max_seq_len=256, vocab_size=8192
    )
    hf = build_config(shape)
    cfg = TrainConfig(
        max_steps=2,
        micro_batch_size=4,
        warmup_steps=1,
        parallel=parallel,
        activation_checkpointing=ac,
        precision="bf16",
        eval_every=0,
        ckpt_every=0,
        log_every=1,
    )

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

    base = rss()
    with meta_init(cfg, rt):  # as pretraining builds it
        model = build_model(hf, seed=0)
    fit(model, Task(), cfg, rt, progress=False)
    peaks = [rss() - base]
    if rt.distributed:
        peaks = [None] * rt.world_size
        dist.all_gather_object(peaks, rss() - base)
    if rt.is_main:
        n = model_size(hf).n_params
        row = {
            "d_model": width,
            "n_params": n,
            "peak_bytes": max(peaks),
            "rank_peak_bytes": peaks,
            "bytes_per_param": max(peaks) / n,
        }
        out.write_text(json.dumps(row))
    shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget-mib", type=float, default=1024)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--widths", nargs="+", type=int, default=WIDTHS)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_memory.json"
    )
    parser.add_argument("--worker", nargs=4, metavar=("PARALLEL", "AC", "WIDTH", "OUT"))
    args = parser.parse_args()
    if args.worker:
        parallel, ac, width, out = args.worker
        worker(parallel, ac == "1", int(width), Path(out))
        return
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", **MALLOC_ENV}
    work = ROOT / "benchmarks" / "work"
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.modes:
        parallel, nproc, ac = MODES[name]
        rows = []
        for width in args.widths:
            out = work / f"memory-{name.replace('+', '-')}-{width}.json"
            worker_args = [__file__, "--worker", parallel, "1" if ac else "0", str(width), str(out)]
            if nproc == 1:
                cmd = [sys.executable, *worker_args]
            else:
                cmd = [torchrun, "--standalone", f"--nproc-per-node={nproc}", *worker_args]
            subprocess.run(cmd, check=True, env=env)
            rows.append(json.loads(out.read_text()))
            print(name, json.dumps(rows[-1]), flush=True)
        fits = [r for r in rows if r["peak_bytes"] <= args.budget_mib * 2**20]
        results[name] = {
            "ranks": nproc,
            "ladder": rows,
            "largest_within_budget": max(fits, key=lambda r: r["n_params"]) if fits else None,
        }
    import machine  # benchmarks/machine.py: what the figures were measured on

    payload = {
        "machine": machine.describe(),
        "budget_mib_per_rank": args.budget_mib,
        "widths": args.widths,
        "malloc_env": MALLOC_ENV,
        "results": results,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
