"""lmforge's training step against the minimal loop, side by side in ONE process, for loaded
machines: the ratio of the two, not their speeds, is the figure.

``train_throughput.py`` gives each contender a process of its own, which is right on an idle
machine; on a shared one the load moves between processes and the order, not the loop, decides
the ratio. Here both loops (lmforge's ``fit`` as ``train_throughput.lmforge_setup`` sets it
up, and ``train_throughput.run_minimal``: the same model, batches, optimizer settings) alternate
in one process, A-B-B-A within each round, so drift in the load hits both alike. Each step is
clocked twice: wall time, and this process's CPU time. With ``--threads 1`` the CPU time of a
step barely moves with other processes' load (no OpenMP thread spins waiting for a descheduled
sibling), so it is the figure to trust on a shared machine. Each round gives one ratio per clock
(the minimal loop's median seconds a step over lmforge's: above 1, lmforge is faster); the
median over rounds is reported with the spread and the load average before and after.

    .venv/bin/python benchmarks/train_parity.py [--rounds 4 --steps 6 --warmup 2 --threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import machine  # benchmarks/machine.py (this script's folder): what the figures ran on
import torch
from train_throughput import SEQ, SHAPE, lmforge_setup, run_minimal

from lmforge.allocator import keep_freed_blocks
from lmforge.model import build_config, build_model
from lmforge.train.data import BlockDataset
from lmforge.train.loop import fit
from lmforge.train.synthetic import write_synthetic_tokenized


def load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


class Clock:
    """Per-step (CPU, wall) seconds from stamps taken after each step."""

    def __init__(self):
        self.stamps = [(time.process_time(), time.perf_counter())]

    def tick(self, *_: object) -> None:
        self.stamps.append((time.process_time(), time.perf_counter()))

    def per_step(self, warmup: int) -> tuple[float, float]:
        steps = list(zip(self.stamps[warmup:-1], self.stamps[warmup + 1 :], strict=True))
        cpu = statistics.median(b[0] - a[0] for a, b in steps)
        wall = statistics.median(b[1] - a[1] for a, b in steps)
        return cpu, wall


def clocked(name: str, ds: BlockDataset, precision: str, args) -> tuple[float, float]:
    clock = Clock()
    if name.startswith("lmforge"):
        steps = args.warmup + args.steps
        cfg, rt, _, task = lmforge_setup(ds, precision, steps, 1, args.compile)
        # lmforge-uncast: lmforge's loop over the stock model (what the norms' cast gains)
        model = build_model(build_config(SHAPE), seed=0, cast_once=name == "lmforge")
        fit(model, task, cfg, rt, progress=False, on_log=clock.tick)
    else:
        run_minimal(ds, precision, args.steps, args.warmup, args.compile, on_step=clock.tick)
    return clock.per_step(args.warmup)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--compile", action="store_true", help="both loops under torch.compile")
    parser.add_argument("--uncast", action="store_true", help="also lmforge over the stock model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_blocks()  # as lmforge's training processes run (benchmarks/allocator.py)
    before = load()
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_tokenized(
            Path(tmp) / "tok", vocab_size=8192, block_size=SEQ, n_blocks={"train": 512}
        )
        ds = BlockDataset(data / "blocks", "train")
        for precision in args.precisions:
            names = ["lmforge", "minimal"] + (["lmforge-uncast"] if args.uncast else [])
            ratios = {(n, c): [] for n in names if n != "minimal" for c in ("cpu", "wall")}
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                got: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
                for name in order + order[::-1]:  # A B B A
                    got[name].append(clocked(name, ds, precision, args))
                for (name, clock), values in ratios.items():
                    i = ("cpu", "wall").index(clock)
                    mine = statistics.fmean(s[i] for s in got[name])
                    values.append(statistics.fmean(s[i] for s in got["minimal"]) / mine)
                now = {f"{n}/{c}": round(v[-1], 3) for (n, c), v in ratios.items()}
                print(f"{precision} round {r}: {now} {got} load {load()}", flush=True)
            out[precision] = {
                f"{name} {clock}": {
                    "median": statistics.median(v),
                    "min": min(v),
                    "max": max(v),
                    "rounds": v,
                }
                for (name, clock), v in ratios.items()
            }
    payload = {
        "machine": machine.describe(),
        "threads": args.threads,
        "compile": args.compile,
        "rounds": args.rounds,
        "timed_steps": args.steps,
        "load_before": before,
        "load_after": load(),
        "minimal_step_over_lmforge_step": out,
    }
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
