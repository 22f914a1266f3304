"""Training throughput: the lmforge loop against a minimal loop and ``transformers.Trainer``.

Same model (6 layers, width 384, 6 heads, context 256, vocabulary 8192), same synthetic blocks,
batch 8, AdamW (betas 0.9/0.95, weight decay 0.1), clipping at 1.0, warmup + cosine, one
process, all cores. Three trainers, each eager (its default) and under ``torch.compile``
(``TrainConfig.compile`` / the minimal loop's ``torch.compile(model)`` /
``TrainingArguments.torch_compile``; compilation falls in the untimed warm-up steps). The minimal
loop is nanoGPT's, written out: forward, backward, clip, AdamW step, nothing else (no logging,
no checkpoints, no divergence check): the floor any loop's overhead is measured against.

Each contender runs in a process of its own, started as its users start it: lmforge's as the
lmforge CLI starts its processes (``lmforge.mkl_shim``: on an AMD CPU, MKL's fast kernels), the
minimal loop and Trainer as plain Python. ``lmforge@stock`` is lmforge's loop in a plain
process too, which separates what the loop does from what the process set-up does.

Each round runs all of them for the same steps, in a rotating order, at fp32 and bf16
(autocast); tokens/s is the median over rounds of the post-warm-up steps. MFU divides the
achieved model FLOP/s (6N + 12LdT per token) by the matmul peak of the same precision measured
in each round in both kinds of process with the same threads (the better of the two;
``lmforge.train.flops.measure_matmul_peak``: the best of several sizes and repeats, so that no
MFU can exceed 100%).

    .venv/bin/python benchmarks/train_throughput.py [--rounds 3 --steps 12 --warmup 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import machine  # benchmarks/machine.py (this script's folder): what the figures ran on
import numpy as np
import torch

from lmforge import mkl_shim
from lmforge.allocator import keep_freed_blocks
from lmforge.config import ModelConfig, TrainConfig
from lmforge.machine import enter as enter_machine
from lmforge.model import build_config, build_model, model_size
from lmforge.train.data import BlockDataset, GlobalBatchSampler
from lmforge.train.distributed import Runtime
from lmforge.train.flops import measure_matmul_peak, precision_dtype
from lmforge.train.loop import fit
from lmforge.train.pretrain import LMTask
from lmforge.train.synthetic import write_synthetic_tokenized

ROOT = Path(__file__).resolve().parents[1]
SHAPE = ModelConfig(n_layers=6, d_model=384, n_heads=6, max_seq_len=256, vocab_size=8192)
BATCH, SEQ = 8, 256


CONTENDERS = (
    "lmforge",
    "lmforge+compile",
    "lmforge@stock",
    "minimal",
    "minimal+compile",
    "trainer",
    "trainer+compile",
)


def lmforge_setup(
    ds: BlockDataset, precision: str, steps: int, log_every: int, compile: bool = False
) -> tuple[TrainConfig, Runtime, torch.nn.Module, LMTask]:
    """lmforge's loop at the reference shape: its config, runtime, fresh model and task."""
    cfg = TrainConfig(
        max_steps=steps,
        micro_batch_size=BATCH,
        warmup_steps=2,
        lr=1e-3,
        precision=precision,
        parallel="single",
        eval_every=0,
        ckpt_every=0,
        log_every=log_every,
        compile=compile,
    )
    rt = Runtime()
    model = build_model(build_config(SHAPE), seed=0)
    sampler = GlobalBatchSampler(len(ds), BATCH, 1, 1, seed=0)
    return cfg, rt, model, LMTask(ds, ds, sampler, rt, SEQ, np.arange(0), BATCH)


def run_lmforge(ds: BlockDataset, precision: str, steps: int, warmup: int, compile: bool) -> float:
    # Log windows of `warmup` steps: the first holds the warm-up, the rest are timed.
    cfg, rt, model, task = lmforge_setup(ds, precision, warmup + steps, warmup, compile)
    result = fit(model, task, cfg, rt, progress=False)
    rows = [r for r in result.history if "tokens_per_s" in r][1:]
    return statistics.fmean(r["tokens_per_s"] for r in rows)


def run_minimal(
    ds: BlockDataset,
    precision: str,
    steps: int,
    warmup: int,
    compile: bool,
    on_step: Callable[[], None] | None = None,
) -> float:
    """nanoGPT's training step over the same model and batches (its optimizer set-up: decay on
    2-D weights, fused AdamW where nanoGPT asks for it, i.e. on CUDA only). The model is the
    stock Hugging Face one, as a user would build it (lmforge's own build casts each block's
    norm output once under autocast: ``lmforge.model.builder.cast_block_norms_once``).
    ``on_step`` is called after each step (the parity benchmark's clock)."""
    import inspect
    import math

    model = build_model(build_config(SHAPE), seed=0, cast_once=False)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    device = torch.device("cpu")
    fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device.type == "cuda"
    optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), fused=fused)
    step_model = torch.compile(model) if compile else model
    sampler = GlobalBatchSampler(len(ds), BATCH, 1, 1, seed=0)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    total = warmup + steps

    def lr_at(it: int) -> float:
        if it < 2:
            return 1e-3 * (it + 1) / 2
        return 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * (it - 2) / (total - 2)))

    model.train()
    for it in range(total):
        if it == warmup:
            start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it)
        x = ds.batch(sampler.indices(it, 0, 0), SEQ)
        with amp:
            logits = step_model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)).float(), x[:, 1:].reshape(-1)
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step()
    return steps * BATCH * SEQ / (time.perf_counter() - start)


def run_trainer(
    ds: BlockDataset, precision: str, steps: int, warmup: int, compile: bool, out: Path
) -> float:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Clock(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    class Blocks(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            ids = torch.from_numpy(ds.tokens[i, :SEQ].astype(np.int64))
            return {"input_ids": ids, "labels": ids}

    args = TrainingArguments(
        output_dir=str(out),
        max_steps=warmup + steps,
        per_device_train_batch_size=BATCH,
        learning_rate=1e-3,
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        bf16=precision == "bf16",
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        dataloader_num_workers=0,
        optim="adamw_torch_fused",
        disable_tqdm=True,
        seed=0,
        torch_compile=compile,
    )
    clock = Clock()
    model = build_model(build_config(SHAPE), seed=0)
    Trainer(model=model, args=args, train_dataset=Blocks(), callbacks=[clock]).train()
    elapsed = clock.times[-1] - clock.times[warmup - 1]
    return steps * BATCH * SEQ / elapsed


def clean_env(cli: bool) -> dict[str, str]:
    """A child's environment: a plain process's, or one the lmforge CLI will set up itself."""
    drop = ("LD_PRELOAD", mkl_shim.SWITCH, mkl_shim.OFF)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    if not cli:
        env[mkl_shim.SWITCH] = "0"
    return env


def child(args: argparse.Namespace) -> None:
    """One contender (or the matmul peak) in this process; prints one JSON line."""
    if args.cli:
        enter_machine()  # what `lmforge` does first: the process the CLI would run
    # Every contender runs with the heap lmforge's training processes keep: with glibc's default
    # thresholds, whichever contender ran first paid the page faults of its large buffers, and
    # the order, not the loop, decided the ratio (benchmarks/allocator.py).
    keep_freed_blocks()
    name, precision = args.one, args.precision
    if name == "peak":
        tps = measure_matmul_peak(torch.device("cpu"), precision_dtype(precision), 1.0)
    else:
        ds = BlockDataset(Path(args.data) / "blocks", "train")
        compile = name.endswith("+compile")
        if name.startswith("lmforge"):
            tps = run_lmforge(ds, precision, args.steps, args.warmup, compile)
        elif name.startswith("minimal"):
            tps = run_minimal(ds, precision, args.steps, args.warmup, compile)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                tps = run_trainer(ds, precision, args.steps, args.warmup, compile, Path(tmp))
    print(json.dumps({"value": tps, "mkl_shim": mkl_shim.state()}), flush=True)


def spawn(name: str, precision: str, cli: bool, data: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--one", name, "--precision", precision, "--data", str(data)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)] + (["--cli"] if cli else [])
    done = subprocess.run(cmd, env=clean_env(cli), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} ({precision}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    # One contender in this process (what main() spawns):
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cli", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return child(args)
    flops = model_size(build_config(SHAPE), SEQ).flops_per_token
    results: dict[str, dict] = {}
    shim: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_tokenized(
            Path(tmp) / "tok", vocab_size=8192, block_size=SEQ, n_blocks={"train": 512}
        )
        for precision in args.precisions:
            samples: dict[str, list[float]] = {n: [] for n in (*CONTENDERS, "peak", "peak@cli")}
            for r in range(args.rounds):
                for name, cli in (("peak", False), ("peak@cli", True)):
                    samples[name].append(spawn("peak", precision, cli, data, args)["value"])
                shift = r % len(CONTENDERS)  # no contender always first
                for name in CONTENDERS[shift:] + CONTENDERS[:shift]:
                    cli = name.startswith("lmforge") and not name.endswith("@stock")
                    got = spawn(name.removesuffix("@stock"), precision, cli, data, args)
                    samples[name].append(got["value"])
                    shim["cli" if cli else "stock"] = got["mkl_shim"]
                    print(f"{precision} round {r} {name}: {got['value']:.0f} tokens/s", flush=True)
            peak = max(statistics.median(samples["peak"]), statistics.median(samples["peak@cli"]))
            row: dict = {
                "matmul_peak_gflops": peak / 1e9,
                "matmul_peak_stock_gflops": statistics.median(samples["peak"]) / 1e9,
            }
            for name in CONTENDERS:
                tps = statistics.median(samples[name])
                row[name] = {
                    "tokens_per_s": tps,
                    "mfu": tps * flops / peak,
                    "samples": samples[name],
                }
            tps = {name: row[name]["tokens_per_s"] for name in CONTENDERS}
            row["speedup"] = {
                "eager_vs_minimal": tps["lmforge"] / tps["minimal"],
                "compiled_vs_minimal_compiled": tps["lmforge+compile"] / tps["minimal+compile"],
                "eager_vs_trainer": tps["lmforge"] / tps["trainer"],
                "compiled_vs_trainer": tps["lmforge+compile"] / tps["trainer"],
                "compiled_vs_trainer_compiled": tps["lmforge+compile"] / tps["trainer+compile"],
                "stock_loop_vs_trainer": tps["lmforge@stock"] / tps["trainer"],
            }
            results[precision] = row
    payload = {
        "shape": {
            "n_layers": 6,
            "d_model": 384,
            "n_heads": 6,
            "seq_len": SEQ,
            "vocab": 8192,
            "batch": BATCH,
        },
        "machine": machine.describe(),
        "flops_per_token": flops,
        "threads": torch.get_num_threads(),
        "heap": keep_freed_blocks(),
        "mkl_shim": shim,
        "rounds": args.rounds,
        "timed_steps": args.steps,
        "results": results,
    }
    # One run per machine class: this run replaces its own class's and keeps the others'.
    machine.record_by_class(ROOT / "benchmarks" / "results" / "train_throughput.json", payload)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
