"""Write docs/benchmarks/training.md from the results of train_throughput.py and train_memory.py.

.venv/bin/python benchmarks/train_report.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def throughput_section(runs: dict[str, dict]) -> list[str]:
    """The throughput tables of every machine class measured (one run each in the JSON)."""
    first = next(iter(runs.values()))
    s = first["shape"]
    lines = [
        "## Throughput: lmforge loop vs a minimal loop and `transformers.Trainer`",
        "",
        f"`benchmarks/train_throughput.py`: {s['n_layers']} layers, width {s['d_model']}, "
        f"{s['n_heads']} heads, context {s['seq_len']}, vocabulary {s['vocab']}, batch "
        f"{s['batch']}; one process, all cores; the median of interleaved rounds of timed "
        "steps. MFU against the matmul peak of the same precision measured in the same run. Raw: "
        "`benchmarks/results/train_throughput.json`, one run per machine class.",
        "",
        "Each cell: tokens/s (MFU). Eager is each trainer's default; compiled runs under "
        "`torch.compile` (lmforge `pretrain.compile: true`, the minimal loop "
        "`torch.compile(model)`, Trainer `torch_compile=True`), its compilation in the untimed "
        "warm-up. The minimal loop is nanoGPT's step written out (forward, backward, clip, AdamW "
        "step) over the same model and batches: what is left when a loop does nothing else.",
        "",
    ]
    for data in runs.values():
        lines += throughput_table(data)
    return lines


LABELS = {
    "lmforge": "lmforge eager",
    "lmforge+compile": "lmforge compiled",
    "lmforge@stock": "lmforge eager, plain process",
    "minimal": "minimal eager",
    "minimal+compile": "minimal compiled",
    "trainer": "Trainer eager",
    "trainer+compile": "Trainer compiled",
}
SPEEDUPS = {
    "eager_vs_minimal": "lmforge / minimal, eager",
    "compiled_vs_minimal_compiled": "lmforge / minimal, compiled",
    "eager_vs_trainer": "lmforge / Trainer, eager",
    "compiled_vs_trainer": "lmforge compiled / Trainer eager",
    "compiled_vs_trainer_compiled": "lmforge / Trainer, compiled",
    "stock_loop_vs_trainer": "lmforge in a plain process / Trainer, eager",
}


def throughput_table(data: dict) -> list[str]:
    import machine  # benchmarks/machine.py

    lines = [
        f"### {data['machine']['machine_class']}",
        "",
        machine.line(data["machine"])
        + f" {data['rounds']} rounds of {data['timed_steps']} timed steps.",
        "",
    ]
    if data.get("mkl_shim"):  # runs from before each contender had a process of its own lack it
        shim = data["mkl_shim"]
        lines += [
            f"MKL in lmforge's processes: {shim.get('cli', '?')}; in the plain processes: "
            f"{shim.get('stock', '?')}.",
            "",
        ]
    # The contenders, in the order train_throughput.py ran and wrote them.
    first = next(iter(data["results"].values()))
    names = [n for n, v in first.items() if isinstance(v, dict) and "tokens_per_s" in v]
    lines += [
        "| precision | matmul peak (GFLOP/s) | " + " | ".join(LABELS[n] for n in names) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in names) + " |",
    ]
    for prec, row in data["results"].items():
        cells = " | ".join(f"{row[n]['tokens_per_s']:.0f} ({row[n]['mfu']:.1%})" for n in names)
        lines.append(f"| {prec} | {row['matmul_peak_gflops']:.1f} | {cells} |")
    keys = [k for k in SPEEDUPS if k in first["speedup"]]
    lines += [
        "",
        "| precision | " + " | ".join(SPEEDUPS[k] for k in keys) + " |",
        "| --- | " + " | ".join("---:" for _ in keys) + " |",
    ]
    for prec, row in data["results"].items():
        up = row["speedup"]
        lines.append(f"| {prec} | " + " | ".join(f"{up[k]:.2f}x" for k in keys) + " |")
    mfus = [row[n]["mfu"] for row in data["results"].values() for n in names]
    missing = [p for p in ("fp32", "bf16") if p not in data["results"]]
    lines += [
        "",
        f"Highest MFU in this run: {max(mfus):.1%} (the peak is the best of several matmul "
        "sizes and repeats at the training threads, so no MFU can pass 100%)."
        + (f" Not measured in this run: {', '.join(missing)}." if missing else ""),
    ]
    if data.get("note"):
        lines += ["", f"How this run was made: {data['note']}."]
    return [*lines, "", *NOTES.get(data["machine"]["machine_class"], []), ""]


# What each class's run showed beyond its table, written by hand from the runs it names.
NOTES: dict[str, list[str]] = {}
NOTES["AVX2 CPU"] = [
    "Here bf16 is not measured: without AVX512-BF16 or AMX a bf16 matmul is emulated, about "
    "100x slower than fp32, and `precision: auto` trains in fp32. How this run was made: one "
    "invocation (`train_throughput.py --rounds 2 --precisions fp32`) on an otherwise idle "
    "machine, 2026-12-07 UTC, every contender in a process of its own; no contender moved by "
    "more than 1% between rounds.",
    "",
    "Against the issue's targets: lmforge is 1.25x the minimal loop eager, 1.23x compiled and "
    "1.24x Trainer eager. The gain is the process, not the loop. A plain Python process on an "
    "AMD CPU gets MKL's generic kernels (`COMPATIBLE`); lmforge's processes get its AVX2 ones "
    "(`lmforge.mkl_shim`), and matmuls are three quarters of a step. In a plain process "
    "lmforge's loop is 1.00x Trainer eager and 1.01x the minimal loop: its own work is under "
    "2% of a step (the profile below). Every plain-process contender reaches 63-64% MFU "
    "against the better peak; the run before the shim (2026-12-06, all six contenders in one "
    "plain process: lmforge 1.01x the minimal loop eager, 1.00x compiled, 0.99x Trainer eager) "
    "showed 80% against the generic kernels' own peak (153 GFLOP/s), which understated this "
    "CPU by 1.29x. `torch.compile` gains under 2% here. `torch.nn.functional.rms_norm` (the "
    "fused op) was 1.3x slower than Llama's own RMSNorm at this shape (4.7 against 3.6 ms "
    "forward and backward on 2,048 x 384).",
]
NOTES["AVX512-BF16 CPU"] = [
    "This run predates `lmforge.mkl_shim`: all contenders shared one plain process. The CPU is "
    "an AMD one too, so its fp32 row ran MKL's generic kernels; torch sends its bf16 matmuls to "
    "oneDNN, which dispatches by CPU features on any vendor, so the shim should leave them as "
    "they are. Neither is re-measured: no native-bf16 CPU in this session.",
    "",
    "Both trainers run the same Hugging Face model, so compiled against compiled they are "
    "close to parity: the loop adds little of its own, and what `torch.compile` fuses "
    "(RMSNorm, RoPE, SwiGLU, the loss's softmax, the autocast casts) is where the time "
    "outside matmuls goes. Compilation costs about 20-40 s per process on this CPU before the "
    "first step, so `pretrain.compile` is off in the default (minutes-long) CPU run and is "
    "worth turning on for GPU presets and long runs.",
    "",
    "Against the issue's targets (at least 1.0x the minimal loop eager and compiled, 1.1x "
    "Trainer eager): three trainers over one model on one CPU differ by their per-step "
    "overhead only, and that is inside the spread of the samples (`samples` in the JSON: "
    "+-10% between rounds). A torch profile of one bf16 step of this shape (about 0.4 s) "
    "puts 76% of it in the matmuls and the CPU flash-attention kernel, which all three "
    "share. The loss's log-softmax backward is 4% and the autocast casts 4.5%, both also "
    "shared. What the loop itself adds (clipping, the fused AdamW, reading the loss) is "
    "under 2%. Parity is what a loop can reach here; 1.1x over Trainer eager would need a "
    "faster model step. An earlier run's 0.88x against Trainer eager in bf16 did not come "
    "back: a hand-written loop with the same model, its own loss, fused AdamW and foreach "
    "clipping came within 2% of both (medians of 2 rounds).",
]


def floor_section(runs: dict[str, dict]) -> list[str]:
    """Where one eager step goes (``step_floor.py``), and the most a loop could gain."""
    import machine  # benchmarks/machine.py

    lines = [
        "## Where an eager step goes, and the most a loop can gain",
        "",
        "`benchmarks/step_floor.py`: lmforge's own step (forward with the loss, backward, "
        "clipping, AdamW) at the throughput shape, profiled with `torch.profiler`; each op's own "
        "time, per step, in six groups. *Python* is the step's time outside every op (the loop's "
        "and the model's interpreter work). The bounds are the speed-up of a step in which every "
        "op outside the named groups took no time: what any loop, fused loss or fused "
        "element-wise op could reach against a trainer of the same model. The matmul rate is "
        "their analytic FLOPs over their profiled time, against the peak measured in the same "
        "run. Raw: `benchmarks/results/step_floor.json`, one run per machine class.",
        "",
        "| machine class | precision | step (s) | matmuls | attention | loss | AdamW | Python "
        "| other | matmul GFLOP/s (of peak) | bound: matmuls only | bound: matmuls + attention |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    groups = ("matmul", "attention", "loss", "optimizer", "python", "other")
    for name, data in runs.items():
        cells = " | ".join(f"{data['share'].get(g, 0.0):.1%}" for g in groups)
        lines.append(
            f"| {name} | {data['precision']} | {data['step_seconds']:.2f} | {cells} | "
            f"{data['matmul_gflops']:.0f} ({data['matmul_efficiency']:.0%}) | "
            f"{data['bound_matmuls_only']:.2f}x | {data['bound_matmuls_and_attention']:.2f}x |"
        )
    lines.append("")
    for data in runs.values():
        lines.append(f"- {machine.line(data['machine'])} {data['timed_steps']} profiled steps.")
    return [*lines, "", *FLOOR_NOTES, ""]


# Written by hand from the runs named here.
FLOOR_NOTES = [
    "On the AVX2 CPU, in a process set up as the CLI sets up its own (MKL's AVX2 kernels), the "
    "matmuls run at 92% of the measured peak and take 76% of a 1.19 s step; were every op "
    "outside them and the attention kernel free, the step would be at most 1.16x faster. With "
    "MKL's generic kernels (the same script before `lmforge.mkl_shim`, 2026-12-07 UTC) the step "
    "took 1.48 s, the matmuls 79% of it at 94% of that path's lower peak, and the bound was "
    "1.12x: no loop, fused loss or element-wise fusion could have reached 1.1x over Trainer "
    "eager on the same model and kernels. What did was the kernels. Two one-off measurements "
    "on this machine, not kept in the code, agree: a chunked linear-plus-cross-entropy that "
    "never builds the 8192-way logits (the gradient computed in the forward, 256 to 2,048 "
    "tokens a chunk) took 1.46-1.49 s a step against 1.45-1.48 s for the model's own loss, and "
    "a causal attention split in two blocks of `bmm` was 10% faster than the flash kernel at "
    "this shape (24.1 against 26.9 ms a layer, forward and backward): 1% of a step.",
]


def memory_table(data: dict) -> list[str]:
    lines = [
        "## Memory per rank: single, DDP, FSDP2, FSDP2 + activation checkpointing",
        "",
        "`benchmarks/train_memory.py`: 4-layer Llama shapes of growing width (vocabulary 8192, "
        "tied embeddings), AdamW, bf16 autocast, batch 4 x 256 per rank, 2 optimizer steps, 2 "
        "processes (gloo) for the distributed modes. Every (mode, width) rung runs in fresh "
        "processes with the same fixed glibc thresholds in every mode ("
        + ", ".join(f"`{k}={v}`" for k, v in data["malloc_env"].items())
        + "), so a freed tensor goes back to the OS and the resident set follows live memory. "
        "Reported: peak resident set above the process's pre-model baseline, the larger of the "
        "ranks. Raw: `benchmarks/results/train_memory.json`.",
        "",
        "| mode | ranks | "
        + " | ".join(f"d={w}: MiB (B/param)" for w in data["widths"])
        + f" | largest within {data['budget_mib_per_rank']:.0f} MiB/rank |",
        "| --- | ---: | " + " | ".join("---:" for _ in data["widths"]) + " | ---: |",
    ]
    for mode, res in data["results"].items():
        cells = [
            f"{r['peak_bytes'] / 2**20:.0f} ({r['bytes_per_param']:.1f})" for r in res["ladder"]
        ]
        best = res["largest_within_budget"]
        best_txt = f"{best['n_params'] / 1e6:.1f} M (d={best['d_model']})" if best else "none"
        lines.append(f"| {mode} | {res['ranks']} | " + " | ".join(cells) + f" | {best_txt} |")
    single, fsdp = (data["results"][m]["ladder"][-1] for m in ("single", "fsdp"))
    saved = single["peak_bytes"] - fsdp["peak_bytes"]
    return [
        *lines,
        "",
        f"At d={fsdp['d_model']} FSDP2 saves {saved / 2**20:.0f} MiB per rank against one "
        f"process ({saved / fsdp['n_params']:.1f} B/param). " + MEMORY_NOTES,
    ]


# Figures from the runs named here, written by hand: this script does not recompute them.
MEMORY_NOTES = (
    "Sharding weights and both AdamW moments over 2 ranks would save 6 B/param; gradients "
    "add little because the peak comes where the second step turns from forward to backward, "
    "with every activation alive and few gradients yet (a phase-sampled run at d=768), and "
    "FSDP2 holds the gathered parameters of the blocks in flight on top. The rest of the peak "
    "is activations (batch 4 x 256, 8192-way "
    "logits), which no data-parallel mode shards; recomputing them (fsdp+ac) is the next "
    "saving.\n\n"
    "Earlier tables showed FSDP2 above one process (d=768: single 1053 MiB, fsdp 1281 MiB). "
    "That was the measurement: the whole ladder ran in one process per mode and rank 0's "
    "`ru_maxrss` was read, while glibc's dynamic mmap threshold kept freed tensors resident. "
    "Fresh processes alone still gave single 926 MiB, fsdp 1113 MiB at d=768; with the fixed "
    "thresholds as well, 768 and 627 MiB. Building the model on the meta device on ranks 1.. "
    "(`meta_init`, now what pretraining does) spares those ranks a whole model at start-up but "
    "does not move the training peak (fsdp d=768: 627 MiB without it, 628 MiB with it)."
)


UNRECORDED = (
    "Machine: measured before machine classes were recorded; 2-core AMD EPYC, class not recorded."
)


def memory_machine_line(data: dict) -> str:
    import machine  # benchmarks/machine.py

    record = data.get("machine")
    return machine.line(record) if isinstance(record, dict) else UNRECORDED


def main() -> None:
    lines = [
        "# Training benchmarks",
        "",
        "Measured on shared 2-core CPU machines of the CI's kind; each table names its machine "
        "class. Ratios within a run matter, absolute numbers move with load.",
        "",
    ]
    path = RESULTS / "train_throughput.json"
    if path.exists():
        data = json.loads(path.read_text())
        runs = data.get("by_machine_class") or {data["machine"]["machine_class"]: data}
        lines += throughput_section(runs)
    path = RESULTS / "step_floor.json"
    if path.exists():
        lines += floor_section(json.loads(path.read_text())["by_machine_class"])
    path = RESULTS / "train_memory.json"
    if path.exists():
        data = json.loads(path.read_text())
        lines += [*memory_table(data), "", memory_machine_line(data), ""]
    (ROOT / "docs" / "benchmarks" / "training.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
