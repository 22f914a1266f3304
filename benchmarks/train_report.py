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


def throughput_table(data: dict) -> list[str]:
    import machine  # benchmarks/machine.py

    lines = [
        f"### {data['machine']['machine_class']}",
        "",
        machine.line(data["machine"])
        + f" {data['rounds']} rounds of {data['timed_steps']} timed steps.",
        "",
        "| precision | matmul peak (GFLOP/s) | lmforge eager | lmforge compiled | minimal "
        "eager | minimal compiled | Trainer eager | Trainer compiled |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    # The contenders, in the order train_throughput.py ran and wrote them.
    first = next(iter(data["results"].values()))
    names = [n for n, v in first.items() if isinstance(v, dict) and "tokens_per_s" in v]
    for prec, row in data["results"].items():
        cells = " | ".join(f"{row[n]['tokens_per_s']:.0f} ({row[n]['mfu']:.1%})" for n in names)
        lines.append(f"| {prec} | {row['matmul_peak_gflops']:.1f} | {cells} |")
    lines += [
        "",
        "| precision | lmforge / minimal, eager | lmforge / minimal, compiled | lmforge / "
        "Trainer, eager | lmforge compiled / Trainer eager | lmforge / Trainer, compiled |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    keys = (
        "eager_vs_minimal",
        "compiled_vs_minimal_compiled",
        "eager_vs_trainer",
        "compiled_vs_trainer",
        "compiled_vs_trainer_compiled",
    )
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
    "machine, 2026-12-06. All six contenders are within 2% of each other in every round "
    "(1,354 to 1,404 tokens/s).",
    "",
    "Against the issue's targets: lmforge is at least 1.0x the minimal loop eager (1.01x) and "
    "compiled (1.00x), and 0.99x Trainer eager, so the 1.1x over Trainer eager is not met here "
    "either. A torch profile of 3 eager fp32 steps of this shape (1.48 s a step, lmforge's "
    "model and loss, fused AdamW, foreach clipping) puts 76% of the step in `aten::mm`, 10% in "
    "the CPU flash-attention kernels, 4.7% in the loss's log-softmax forward and backward and "
    "2.6% in `fill_`; the element-wise rest (RMSNorm, RoPE, SiLU) is under 4%, AdamW 0.4%, the "
    "gradient norm 0.2%. All of that is the model's step, which the three trainers share; a "
    "loop has under 1% of its own to save. `torch.compile` gains nothing measurable here "
    "(1.00-1.01x in each trainer): on this CPU the part it can fuse is a tenth of the step. "
    "`torch.nn.functional.rms_norm` (the fused op) was 1.3x slower than Llama's own RMSNorm at "
    "this shape (4.7 against 3.6 ms forward and backward on 2,048 x 384).",
]
NOTES["AVX512-BF16 CPU"] = [
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
    path = RESULTS / "train_memory.json"
    if path.exists():
        data = json.loads(path.read_text())
        lines += [*memory_table(data), "", memory_machine_line(data), ""]
    (ROOT / "docs" / "benchmarks" / "training.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
