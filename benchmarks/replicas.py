"""Replicas on one machine: 2 local PyTorchJob replicas against one process with every core.

The default run trains as a 2-replica PyTorchJob on the local runner (the same job a cluster
runs), and this asks what that costs on a 2-core machine: the runner gives each replica
``cores // replicas`` threads (``lmforge.cores``), so the replicas share the cores instead of
oversubscribing them. Three contenders on the default model shape (``cpu-tiny``) and batch,
fp32 and the precision ``auto`` picks here, interleaved over rounds in one run:

- ``1 process``: ``lmforge pretrain --backend inline``, one process, all usable cores;
- ``2 replicas``: ``--backend local`` with ``launch.nnodes=2``, threads split by the runner;
- ``2 replicas, oversubscribed``: the same with ``OMP_NUM_THREADS`` = all cores per replica
  (what a runner that did not split would do).

tokens/s is the job's own training rate (``metrics.json``: tokens / training seconds, start-up
and rendezvous excluded); the global batch is the same in every contender (one process runs
``grad_accum_steps=2`` micro batches of 8 for the replicas' 2 x 8).

    .venv/bin/python benchmarks/replicas.py [--rounds 3 --steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

import machine  # benchmarks/machine.py (this script's folder): what the figures ran on

from lmforge.cores import usable_cores
from lmforge.train.synthetic import write_synthetic_tokenized

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
CONTENDERS = ("1 process", "2 replicas", "2 replicas, oversubscribed")


def run(name: str, data: Path, out: Path, precision: str, steps: int) -> float:
    cores = usable_cores()
    sets = [
        f"pretrain.max_steps={steps}",
        f"pretrain.warmup_steps={max(1, steps // 10)}",
        f"pretrain.precision={precision}",
        "pretrain.eval_every=0",
        "pretrain.ckpt_every=0",
        "pretrain.log_every=10",
        f"tracking.tracking_uri=sqlite:///{out.parent / 'mlflow.db'}",
        f"tracking.artifact_location={out.parent / 'artifacts'}",
    ]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("OMP_NUM_THREADS", None)
    if name == "1 process":
        sets += ["pretrain.grad_accum_steps=2", "pretrain.parallel=single"]
        backend = "inline"
        env["OMP_NUM_THREADS"] = str(cores)
    else:
        sets += ["launch.nnodes=2", "launch.nproc_per_node=1", "pretrain.parallel=ddp"]
        backend = "local"
        if name.endswith("oversubscribed"):
            env["OMP_NUM_THREADS"] = str(cores)
    cmd = [str(BIN / "lmforge"), "pretrain", "--data", str(data), "--out", str(out)]
    cmd += ["--backend", backend]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=ROOT)
    return float(json.loads((out / "metrics.json").read_text())["tokens_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    from lmforge.train.precision import resolve

    auto = resolve("auto", __import__("torch").device("cpu")).name
    precisions = ["fp32"] if auto == "fp32" else ["fp32", auto]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_tokenized(
            Path(tmp) / "tok",
            vocab_size=4096,
            block_size=256,
            n_blocks={"train": 2048, "validation": 64, "test": 64},
        )
        for precision in precisions:
            samples: dict[str, list[float]] = {name: [] for name in CONTENDERS}
            for r in range(args.rounds):
                order = CONTENDERS[r % 3 :] + CONTENDERS[: r % 3]  # no contender always first
                for name in order:
                    out = Path(tmp) / f"{precision}-{r}-{name.replace(' ', '_')}"
                    tps = run(name, data, out, precision, args.steps)
                    samples[name].append(tps)
                    print(f"{precision} round {r} {name}: {tps:.0f} tokens/s", flush=True)
            base = statistics.median(samples["1 process"])
            results[precision] = {
                name: {
                    "tokens_per_s": statistics.median(samples[name]),
                    "vs_one_process": statistics.median(samples[name]) / base,
                    "samples": samples[name],
                }
                for name in CONTENDERS
            }
    payload = {
        "machine": machine.describe(),
        "shape": "cpu-tiny (4 layers, width 128, 4 heads, context 256, vocabulary 4096)",
        "global_batch": 16,
        "rounds": args.rounds,
        "steps": args.steps,
        "results": results,
    }
    runs = machine.record_by_class(ROOT / "benchmarks" / "results" / "replicas.json", payload)
    write_doc(runs)
    print(json.dumps(results, indent=2))


def write_doc(runs: dict[str, dict]) -> None:
    """One table for every machine class measured (``replicas.json`` keeps one run each)."""
    first = next(iter(runs.values()))
    lines = [
        "# Replicas on one machine",
        "",
        "`benchmarks/replicas.py`: the default shape, "
        f"{first['shape']}, global batch {first['global_batch']} x 256 tokens; tokens/s is "
        "the job's training rate (start-up and rendezvous excluded), the median of interleaved "
        "rounds. Raw: `benchmarks/results/replicas.json`, one run per machine class.",
        "",
    ]
    for payload in runs.values():
        lines += [
            f"## {payload['machine']['machine_class']}",
            "",
            machine.line(payload["machine"])
            + f" {payload['steps']} steps, {payload['rounds']} rounds.",
            "",
            "| precision | " + " | ".join(CONTENDERS) + " |",
            "| --- | " + " | ".join("---:" for _ in CONTENDERS) + " |",
        ]
        for precision, row in payload["results"].items():
            cells = [
                f"{row[n]['tokens_per_s']:.0f} ({row[n]['vs_one_process']:.2f}x)"
                for n in CONTENDERS
            ]
            lines.append(f"| {precision} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "Each cell: tokens/s (against one process). The local runner splits the usable cores "
        "(affinity mask capped by the cgroup quota) between the replicas; the oversubscribed "
        "column is what giving every replica all cores would cost.",
        "",
    ]
    (ROOT / "docs" / "benchmarks" / "replicas.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
