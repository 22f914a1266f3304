"""GPU check: tokens/s, MFU and peak memory of the GPU presets under bf16 and FSDP2 on one GPU.

Three modes (``benchmarks/gpu_check.sh`` drives them):

- ``--dry-run``: no GPU needed. For each preset and GPU count: shapes, parameters, training FLOPs
  per token (``lmforge.model.model_size``) and a memory estimate per GPU (formula below).
- default: each (preset, eager|compiled) case in its own subprocess with a timeout, so a slow
  compile cannot eat the whole budget; the cases' results go to ``--out`` (JSON).
- ``--render JSON --doc MD``: regenerate the docs page from a results file.

A case times the project's own loop (``lmforge.train.loop.fit``) on synthetic token batches
(speed does not depend on the token values), after ``--warmup`` steps, with the model sharded by
FSDP2 ``fully_shard`` on a world of one (as ``lmforge.train.parallel`` shards per block and root)
and bf16 compute with fp32 master weights. MFU = tokens/s * FLOPs/token / the GPU's dense bf16
peak (``lmforge.train.flops.peak_flops``: the datasheet value for H200/H100/A100).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("gpu-125m", "gpu-1b")
MODES = ("eager", "compiled")
VOCAB = 32000  # the GPU presets' vocabulary (src/lmforge/presets/models.yaml)
MICRO_BATCH = {"gpu-125m": 32, "gpu-1b": 16}  # sequences per GPU per step; fits 141 GB H200
CASE_TIMEOUT_S = {"eager": 75, "compiled": 150}  # 2 x (75 + 150) = 450 s of the 8 minutes
MFU_GOAL = {"gpu-1b": 0.40}
H200_MEMORY_GIB = 141

# Bytes per parameter under bf16 compute with fp32 master weights (FSDP2 MixedPrecisionPolicy):
# fp32 weight 4 + fp32 gradient 4 + AdamW first and second moments 4 + 4. All sharded over GPUs.
STATE_BYTES_PER_PARAM = 16
MEMORY_FORMULA = (
    "per GPU = 16 B x params / N (fp32 weight, fp32 grad, AdamW m and v; sharded by FSDP2) "
    "+ 2 B x (embedding + 2 blocks) (bf16 gathered weights, unsharded) "
    "+ b x T x [L x (18 d + 6 kv + 8 f) + 10 V] B (activations: bf16 tensors saved for "
    "backward per block, fp32 norm inputs; bf16 logits + fp32 upcast + fp32 grad)"
)


def preset_config(name: str):
    """The HF config of preset ``name`` as the project builds it."""
    from lmforge.config import load_config
    from lmforge.model import build_config

    cfg = load_config(None, [f"model.preset={name}"])
    return cfg, build_config(cfg.model, vocab_size=VOCAB)


def estimate(name: str, gpus: int, micro_batch: int, seq_len: int | None = None) -> dict:
    """Shapes, FLOPs and the memory estimate (MEMORY_FORMULA) of ``name`` on ``gpus`` GPUs."""
    from lmforge.model import model_size

    _, hf = preset_config(name)
    seq = seq_len or hf.max_position_embeddings
    size = model_size(hf, seq)
    d, layers, f, vocab = hf.hidden_size, hf.num_hidden_layers, hf.intermediate_size, hf.vocab_size
    kv = hf.num_key_value_heads * (d // hf.num_attention_heads)
    block_params = (size.n_params - size.n_embedding) // layers
    sharded = STATE_BYTES_PER_PARAM * size.n_params / gpus
    gathered = 2 * (size.n_embedding + 2 * block_params)
    activations = micro_batch * seq * (layers * (18 * d + 6 * kv + 8 * f) + 10 * vocab)
    total = sharded + gathered + activations
    return {
        "preset": name,
        "gpus": gpus,
        "n_layers": layers,
        "d_model": d,
        "n_heads": hf.num_attention_heads,
        "n_kv_heads": hf.num_key_value_heads,
        "d_ff": f,
        "vocab_size": vocab,
        "seq_len": seq,
        "micro_batch": micro_batch,
        "tokens_per_step_per_gpu": micro_batch * seq,
        "n_params": size.n_params,
        "flops_per_token": size.flops_per_token,
        "flops_per_step_per_gpu": size.flops_per_token * micro_batch * seq,
        "sharded_state_bytes": sharded,
        "gathered_weight_bytes": gathered,
        "activation_bytes": activations,
        "memory_estimate_bytes": total,
        "fits_h200": total < 0.9 * H200_MEMORY_GIB * 2**30,
    }


def gib(n: float) -> str:
    return f"{n / 2**30:.1f}"


def dry_run(presets: list[str], gpu_counts: list[int], out: Path) -> int:
    rows = [estimate(p, n, MICRO_BATCH.get(p, 8)) for p in presets for n in gpu_counts]
    head = "preset    GPUs  params   GFLOP/tok  batch x seq  state/GPU  act  total GiB  fits H200"
    print(head)
    for r in rows:
        print(
            f"{r['preset']:<9} {r['gpus']:>4}  {r['n_params'] / 1e6:>6.0f}M  "
            f"{r['flops_per_token'] / 1e9:>9.2f}  {r['micro_batch']:>4} x {r['seq_len']:<5} "
            f"{gib(r['sharded_state_bytes']):>9}  {gib(r['activation_bytes']):>4}  "
            f"{gib(r['memory_estimate_bytes']):>9}  {'yes' if r['fits_h200'] else 'no'}"
        )
    print(f"memory: {MEMORY_FORMULA}")
    write_json(out, {"mode": "dry-run", "memory_formula": MEMORY_FORMULA, "rows": rows})
    print(f"wrote {out}")
    return 0


def write_json(path: Path, data: dict) -> None:
    """Write whole or not at all (a temp file renamed over the target)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


class SyntheticLM:
    """The pretrain ``LMTask``'s loss on one fixed random batch (no data folder needed)."""

    def __init__(self, batch):
        self.data = batch

    def batch(self, step: int, micro: int):
        return self.data

    def loss(self, model, batch):
        return model(input_ids=batch, labels=batch).loss

    def tokens(self, batch) -> int:
        return batch.numel()

    def evaluate(self, model) -> dict[str, float]:
        return {}


def run_case(args: argparse.Namespace) -> int:
    """One preset and mode in this process; its result as JSON on ``args.case_out``."""
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from lmforge.config import load_config
    from lmforge.model import build_config, build_model, model_size
    from lmforge.train.distributed import Runtime
    from lmforge.train.flops import GPU_PEAKS, peak_flops
    from lmforge.train.loop import fit
    from lmforge.train.parallel import decoder_blocks
    from lmforge.train.precision import resolve

    device = torch.device(args.device)
    # bf16 on the GPU, as the check is about; a CPU run (the test of this code path) trains in
    # what the trainer would choose there: fp32 on an AVX2-only CPU, where bf16 is ~100x slower.
    requested = "bf16" if device.type == "cuda" else "auto"
    steps = args.warmup + args.steps
    seq = args.seq_len or None
    micro = args.micro_batch or MICRO_BATCH.get(args.preset, 8)
    overrides = [
        f"model.preset={args.preset}",
        f"pretrain.max_steps={steps}",
        f"pretrain.micro_batch_size={micro}",
        f"pretrain.log_every={args.warmup}",  # first window: warm-up; second: the timed steps
        "pretrain.eval_every=0",
        "pretrain.ckpt_every=0",
        f"pretrain.precision={requested}",
        "pretrain.parallel=fsdp",
        f"pretrain.compile={'true' if args.mode == 'compiled' else 'false'}",
        f"pretrain.device={device.type}",
    ]
    cfg = load_config(None, overrides)
    hf = build_config(cfg.model, vocab_size=VOCAB)
    seq = seq or hf.max_position_embeddings
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    rt = Runtime(device=device)
    precision = resolve(requested, device)
    model = build_model(hf, seed=cfg.pretrain.seed).to(device)
    # As lmforge.train.parallel shards: each decoder block, then the root; bf16 compute, fp32
    # master weights and gradient reduction (on CPU the loop's autocast casts instead).
    on_gpu = device.type == "cuda"
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if on_gpu
        else MixedPrecisionPolicy()
    )
    for block in decoder_blocks(model):
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, hf.vocab_size, (micro, seq), generator=gen).to(device)
    peak = peak_flops(device, precision.dtype)  # the dense peak at the precision trained in
    name = torch.cuda.get_device_name(device) if on_gpu else "cpu"
    datasheet = on_gpu and any(k in name for k in GPU_PEAKS)
    size = model_size(hf, seq)
    start = time.perf_counter()
    result = fit(
        model,
        SyntheticLM(tokens),
        cfg.pretrain,
        rt,
        flops_per_token=size.flops_per_token,
        peak_flops=peak,
        progress=False,
    )
    timed = result.history[-1]  # the window after warm-up
    record = {
        "preset": args.preset,
        "mode": args.mode,
        "status": "ok",
        "device": name,
        "precision": precision.name,
        "precision_reason": precision.reason,
        "parallel": "fsdp2, world 1",
        "micro_batch": micro,
        "seq_len": seq,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "n_params": size.n_params,
        "flops_per_token": size.flops_per_token,
        "peak_flops": peak,
        "peak_source": "datasheet dense bf16" if datasheet else "measured matmul peak",
        "tokens_per_s": timed["tokens_per_s"],
        "mfu": timed["mfu"],
        "peak_memory_bytes": int(timed["peak_memory_bytes"]),
        "train_loss": timed["train_loss"],
        "wall_s": round(time.perf_counter() - start, 1),
    }
    dist.destroy_process_group()
    write_json(Path(args.case_out), record)
    return 0


def run_all(args: argparse.Namespace) -> int:
    """Every (preset, mode) case in a subprocess with its timeout; all results to ``args.out``."""
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); "
            "on CPU run: bash benchmarks/gpu_check.sh --dry-run",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import machine

    cases = []
    deadline = time.monotonic() + args.budget_s
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        for preset in args.presets:
            for mode in args.modes:
                left = deadline - time.monotonic()
                limit = min(CASE_TIMEOUT_S[mode], left)
                case = {"preset": preset, "mode": mode}
                if limit < 10:
                    cases.append({**case, "status": "skipped: total budget spent"})
                    continue
                case_out = Path(tmp) / f"{preset}-{mode}.json"
                cmd = [sys.executable, __file__, "--case", preset, "--mode", mode]
                cmd += ["--case-out", str(case_out), "--device", args.device]
                cmd += ["--warmup", str(args.warmup), "--steps", str(args.steps)]
                cmd += ["--micro-batch", str(args.micro_batch), "--seq-len", str(args.seq_len)]
                print(f"gpu_check: {preset} {mode} (at most {limit:.0f} s)", flush=True)
                try:
                    proc = subprocess.run(cmd, timeout=limit, capture_output=True, text=True)
                except subprocess.TimeoutExpired:
                    cases.append({**case, "status": f"timeout after {limit:.0f} s"})
                    continue
                if proc.returncode != 0 or not case_out.exists():
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                    cases.append({**case, "status": f"failed (rc {proc.returncode}): {tail[0]}"})
                    continue
                cases.append(json.loads(case_out.read_text()))
                print(f"  {summary(cases[-1])}", flush=True)
    record = machine.describe()
    write_json(
        Path(args.out), {"mode": "gpu", "machine": record, "mfu_goal": MFU_GOAL, "cases": cases}
    )
    print(f"wrote {args.out}")
    return 0


def summary(c: dict) -> str:
    if c.get("status") != "ok":
        return f"{c['preset']} {c['mode']}: {c['status']}"
    return (
        f"{c['preset']} {c['mode']}: {c['tokens_per_s']:,.0f} tokens/s, MFU {c['mfu']:.1%}, "
        f"peak memory {gib(c['peak_memory_bytes'])} GiB"
    )


NOT_RUN = """\
**Status: prepared, not yet run.** No GPU was drawn for the task that wrote this check, so there
are no GPU figures yet; the dry run below is computed on CPU. Run on a GPU machine (one H200: at
most 8 minutes) from the repository root:

    bash benchmarks/gpu_check.sh

It writes `benchmarks/results/gpu.json` and regenerates this page from it. On CPU,
`bash benchmarks/gpu_check.sh --dry-run` prints the shapes, FLOPs and memory estimates.
"""


def render(results: Path, doc: Path) -> int:
    """The docs page from a results file (a GPU run's, or a dry run's: then marked not run)."""
    data = json.loads(results.read_text())
    lines = ["# GPU check: gpu-125m and gpu-1b, bf16, FSDP2 on one GPU", ""]
    source = f"`{results.name}`" if data.get("mode") == "gpu" else "a dry run"
    lines += [f"Generated by `benchmarks/gpu_check.py --render` from {source}; do not edit.", ""]
    if data.get("mode") == "gpu":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import machine

        lines += [machine.line(data["machine"]), ""]
        lines += ["MFU is against the GPU's dense bf16 peak (datasheet: H200 989 TFLOP/s).", ""]
        lines += ["| preset | mode | tokens/s | MFU | peak memory GiB | batch x seq | status |"]
        lines += ["|---|---|---:|---:|---:|---|---|"]
        for c in data["cases"]:
            if c.get("status") == "ok":
                lines.append(
                    f"| {c['preset']} | {c['mode']} | {c['tokens_per_s']:,.0f} | {c['mfu']:.1%} "
                    f"| {gib(c['peak_memory_bytes'])} | {c['micro_batch']} x {c['seq_len']} | ok |"
                )
            else:
                lines.append(f"| {c['preset']} | {c['mode']} | | | | | {c['status']} |")
        goal = data.get("mfu_goal", {})
        lines += ["", "Goal: " + ", ".join(f"{k} at least {v:.0%} MFU" for k, v in goal.items())]
    else:
        lines += [NOT_RUN, "## Dry run (CPU): shapes, FLOPs and memory per GPU", ""]
        lines += ["| preset | GPUs | params | GFLOP/token | batch x seq | state/GPU GiB "]
        lines[-1] += "| activations GiB | estimate GiB | fits H200 |"
        lines += ["|---|---:|---:|---:|---|---:|---:|---:|---|"]
        for r in data["rows"]:
            lines.append(
                f"| {r['preset']} | {r['gpus']} | {r['n_params'] / 1e6:.0f}M "
                f"| {r['flops_per_token'] / 1e9:.2f} | {r['micro_batch']} x {r['seq_len']} "
                f"| {gib(r['sharded_state_bytes'])} | {gib(r['activation_bytes'])} "
                f"| {gib(r['memory_estimate_bytes'])} | {'yes' if r['fits_h200'] else 'no'} |"
            )
        lines += ["", f"Memory estimate: {data['memory_formula']}."]
        lines += ["", "Goal of the GPU run: gpu-1b at least 40% MFU."]
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_name(doc.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(doc)
    print(f"wrote {doc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="shapes, FLOPs, memory; no GPU")
    p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated preset names")
    p.add_argument("--modes", default=",".join(MODES), help="eager,compiled")
    p.add_argument("--gpus", default="1,8", help="dry run: GPU counts to estimate for")
    p.add_argument("--out", default=None, help="results JSON (default: a file under /tmp)")
    p.add_argument("--budget-s", type=float, default=450, help="all cases together, seconds")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (compile happens here)")
    p.add_argument("--steps", type=int, default=10, help="timed steps after warm-up")
    p.add_argument("--micro-batch", type=int, default=0, help="0: the preset's default")
    p.add_argument("--seq-len", type=int, default=0, help="0: the preset's max_seq_len")
    p.add_argument("--device", default="cuda", help="cuda; cpu only to test the code path")
    p.add_argument("--render", type=Path, help="regenerate --doc from this results JSON")
    p.add_argument("--doc", type=Path, default=ROOT / "docs/benchmarks/gpu.md")
    p.add_argument("--case", help=argparse.SUPPRESS)  # one case, in a subprocess of run_all
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--case-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.presets = [s for s in args.presets.split(",") if s]
    args.modes = [s for s in args.modes.split(",") if s]
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        p.error(f"--modes: {', '.join(bad)} unknown; choose from {', '.join(MODES)}")
    if args.render:
        return render(args.render, args.doc)
    if args.case:
        args.preset = args.case
        return run_case(args)
    out = args.out or os.path.join(tempfile.gettempdir(), f"gpu_check.{os.getpid()}.json")
    args.out = out
    if args.dry_run:
        return dry_run(args.presets, [int(n) for n in args.gpus.split(",")], Path(out))
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
