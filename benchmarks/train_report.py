"""Write docs/benchmarks/training.md from the results of train_throughput.py and train_memory.py.

.venv/bin/python benchmarks/train_report.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def throughput_table(data: dict) -> list[str]:
    s = data["shape"]
    lines = [
        "## Throughput: lmforge loop vs `transformers.Trainer`",
        "",
        f"`benchmarks/train_throughput.py`: {s['n_layers']} layers, width {s['d_model']}, "
        f"{s['n_heads']} heads, context {s['seq_len']}, vocabulary {s['vocab']}, batch "
        f"{s['batch']}; one process, {data['threads']} threads; median of {data['rounds']} "
        f"interleaved rounds of {data['timed_steps']} timed steps. MFU against the matmul peak "
        "of the same precision measured in the same run. Raw: `benchmarks/results/train_throughput.json`.",
        "",
        "| precision | matmul peak (GFLOP/s) | lmforge tokens/s | Trainer tokens/s | speed-up | lmforge MFU | Trainer MFU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for prec, row in data["results"].items():
        lm, hf = row["lmforge"], row["trainer"]
        lines.append(
            f"| {prec} | {row['matmul_peak_gflops']:.1f} | {lm['tokens_per_s']:.0f} | "
            f"{hf['tokens_per_s']:.0f} | {row['speedup']:.2f}x | {lm['mfu']:.1%} | {hf['mfu']:.1%} |"
        )
    return lines


def memory_table(data: dict) -> list[str]:
    lines = [
        "## Memory per rank: single, DDP, FSDP2, FSDP2 + activation checkpointing",
        "",
        "`benchmarks/train_memory.py`: 4-layer Llama shapes of growing width, AdamW, bf16 "
        "autocast, batch 4 x 256 per rank, 2 processes (gloo) for the distributed modes; peak "
        "resident set above the pre-model baseline. Raw: `benchmarks/results/train_memory.json`.",
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
    return lines


def main() -> None:
    lines = ["# Training benchmarks", "", "Measured on the shared 2-core CI-class CPU machine; ratios matter, absolute numbers move with load.", ""]  # fmt: skip
    for name, table in (("train_throughput", throughput_table), ("train_memory", memory_table)):
        path = RESULTS / f"{name}.json"
        if path.exists():
            lines += [*table(json.loads(path.read_text())), ""]
    (ROOT / "docs" / "benchmarks" / "training.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
