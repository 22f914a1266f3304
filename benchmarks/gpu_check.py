"""GPU check: tokens/s, MFU and peak memory of the GPU presets under bf16 and FSDP2 on one GPU.

Three modes (``benchmarks/gpu_check.sh`` drives them):

- ``--dry-run``: no GPU needed. For each preset and GPU count: shapes, parameters, training FLOPs
  per token (``lmforge.model.model_size``) and a memory estimate per GPU (formula below).
- default: a smoke case first (versions, one tiny step on the device: a broken environment costs
  seconds, not the budget), then each (preset, eager|compiled) case in its own subprocess with a
  timeout, so a slow compile cannot eat the whole budget. Everything goes to ``--out-dir``
  (``gpu.json``, ``smoke.json``, one log per case, ``gpu.md``): on a lent GPU machine that is
  ``$OUT``, the only folder that comes back.
- ``--render JSON --doc MD``: regenerate the docs page from a results file.

A case times the project's own loop (``lmforge.train.loop.fit``) on synthetic token batches
(speed does not depend on the token values), with the model sharded by FSDP2 ``fully_shard`` on a
world of one (as ``lmforge.train.parallel`` shards per block and root) and bf16 compute with fp32
master weights. Every step is logged; the figures are over the ``--steps`` steps after the
``--warmup`` ones (total tokens / total time). The micro batch is sized from the device's memory
(``micro_batch_for``). MFU = tokens/s * FLOPs/token / the card's dense bf16 peak
(``lmforge.train.flops.peak_flops``: the datasheet value of the exact card, else measured).

The GPU machine receives the tree without ``.venv`` and may carry other torch/transformers
versions than the pins: the shell puts ``src/`` first on ``PYTHONPATH``, and the results say which
versions ran and whether they are inside the pins (``versions``).
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
MICRO_BATCH = {"gpu-125m": 32, "gpu-1b": 16}  # most sequences per GPU per step (H200 sizes)
CASE_TIMEOUT_S = {"eager": 75, "compiled": 150}  # 2 x (75 + 150) = 450 s of the 8 minutes
SMOKE_TIMEOUT_S = 90  # CUDA start-up and one tiny step: about 20 s
MFU_GOAL = {"gpu-1b": 0.40}
H200_MEMORY_GIB = 141
MEMORY_HEADROOM = 0.85  # of the device's memory: the estimate is +-10%, the allocator fragments
PINNED = ("torch", "transformers")  # the versions the check reports against pyproject's pins

# Bytes per parameter under bf16 compute with fp32 master weights (FSDP2 MixedPrecisionPolicy):
# fp32 weight 4 + fp32 gradient 4 + AdamW first and second moments 4 + 4. All sharded over GPUs.
STATE_BYTES_PER_PARAM = 16
MEMORY_FORMULA = (
    "per GPU = 16 B x params / N (fp32 weight, fp32 grad, AdamW m and v; sharded by FSDP2) "
    "+ 2 B x (embedding + 2 blocks) (bf16 gathered weights, unsharded) "
    "+ b x T x [L x (24 d + 8 kv + 8 f) + 10 V] B (activations: bf16 tensors saved for "
    "backward per block, the RMSNorms' fp32 inputs and normalised copies, q and k before and "
    "after RoPE; bf16 logits + fp32 upcast + fp32 grad)"
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
    activations = micro_batch * seq * (layers * (24 * d + 8 * kv + 8 * f) + 10 * vocab)
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


def micro_batch_for(name: str, memory_bytes: float, seq_len: int | None = None) -> int:
    """The most sequences per step (up to the preset's MICRO_BATCH) whose estimate stays within
    MEMORY_HEADROOM of ``memory_bytes``: 16 for gpu-1b on a 141 GB H200, fewer on an 80 GB H100
    (16 would need about 84 GiB). At least 1: a preset too large even then fails in its case."""
    most = MICRO_BATCH.get(name, 8)
    for micro in range(most, 0, -1):
        if estimate(name, 1, micro, seq_len)["memory_estimate_bytes"] <= MEMORY_HEADROOM * (
            memory_bytes
        ):
            return micro
    return 1


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if not piece.isdigit():
            break  # 2.13.0rc1: compare the release part only
    return tuple(parts)


def _satisfies(version: str, spec: str) -> bool:
    """``version`` within a ``>=a,<b`` style pin (only the operators pyproject uses)."""
    ops = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}
    ops.update({">": lambda a, b: a > b, "==": lambda a, b: a == b})
    have = _version_tuple(version)
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        op = next(o for o in (">=", "<=", "==", "<", ">") if clause.startswith(o))
        want = _version_tuple(clause[len(op) :])
        if not ops[op](have[: len(want)], want):
            return False
    return True


def pins(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """pyproject's version specifiers of PINNED (read as text: python3 may be older than 3.11)."""
    found = {}
    for line in pyproject.read_text().splitlines():
        text = line.strip().strip(",").strip('"')
        for name in PINNED:
            if text.startswith(name) and text[len(name) : len(name) + 1] in "<>=!":
                found.setdefault(name, text[len(name) :].split(";")[0].strip())
    return found


def versions() -> dict:
    """What this process runs with: Python, torch and its CUDA, transformers; each against its
    pin. Outside the pins is reported, not refused: the figures are still worth having."""
    import platform
    from importlib import metadata

    import lmforge

    record: dict = {"python": platform.python_version(), "lmforge_from": lmforge.__file__}
    specs = pins()
    for name in PINNED:
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        spec = specs.get(name, "")
        record[name] = {
            "version": have,
            "pin": spec,
            "within_pin": bool(have) and _satisfies(have, spec),
        }
    import torch

    record["cuda"] = torch.version.cuda
    return record


def resolve_device(kind: str):
    """The device a case trains on. CUDA with its index: ``torch.cuda.set_device`` refuses a
    ``torch.device("cuda")`` without one (ValueError on torch 2.13)."""
    import torch

    if kind == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(kind)


def device_memory_bytes(device) -> float:
    """Total memory of ``device``; GPU_CHECK_FAKE_MEMORY_GIB stands in for a GPU in the CPU test
    of this script's control flow."""
    import torch

    fake = os.environ.get("GPU_CHECK_FAKE_MEMORY_GIB")
    if fake:
        return float(fake) * 2**30
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


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
    from lmforge.train.flops import datasheet_peak, peak_flops
    from lmforge.train.loop import fit
    from lmforge.train.parallel import decoder_blocks
    from lmforge.train.precision import resolve

    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    # bf16 on the GPU, as the check is about; a CPU run (the test of this code path) trains in
    # what the trainer would choose there: fp32 on an AVX2-only CPU, where bf16 is ~100x slower.
    requested = "bf16" if on_gpu else "auto"
    steps = args.warmup + args.steps
    _, hf = preset_config(args.preset)
    seq = args.seq_len or hf.max_position_embeddings
    micro = args.micro_batch or micro_batch_for(args.preset, device_memory_bytes(device), seq)
    overrides = [
        f"model.preset={args.preset}",
        f"pretrain.max_steps={steps}",
        f"pretrain.micro_batch_size={micro}",
        "pretrain.log_every=1",  # every step's time: the figures are over the steps after warm-up
        "pretrain.eval_every=0",
        "pretrain.ckpt_every=0",
        f"pretrain.precision={requested}",
        "pretrain.parallel=fsdp",
        f"pretrain.compile={'true' if args.mode == 'compiled' else 'false'}",
        f"pretrain.device={device.type}",
    ]
    cfg = load_config(None, overrides)
    hf = build_config(cfg.model, vocab_size=VOCAB)
    if on_gpu:
        torch.cuda.set_device(device)
    backend = "nccl" if on_gpu else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    rt = Runtime(device=device)
    precision = resolve(requested, device)
    model = build_model(hf, seed=cfg.pretrain.seed).to(device)
    # As lmforge.train.parallel shards: each decoder block, then the root; bf16 compute, fp32
    # master weights and gradient reduction (on CPU the loop's autocast casts instead).
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
    timed = [r for r in result.history if r["step"] > args.warmup and "tokens_per_s" in r]
    # Equal tokens per step, so tokens over time is the harmonic mean of the steps' rates.
    tokens_per_s = len(timed) / sum(1.0 / r["tokens_per_s"] for r in timed)
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
        "timed_steps": len(timed),
        "n_params": size.n_params,
        "flops_per_token": size.flops_per_token,
        "memory_estimate_bytes": estimate(args.preset, 1, micro, seq)["memory_estimate_bytes"],
        "peak_flops": peak,
        "peak_source": (
            "datasheet dense bf16"
            if on_gpu and datasheet_peak(name, precision.dtype) is not None
            else "measured matmul peak"
        ),
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * size.flops_per_token / peak if peak else 0.0,
        "step_s": [round(micro * seq / r["tokens_per_s"], 4) for r in timed],
        "peak_memory_bytes": int(max(r["peak_memory_bytes"] for r in result.history)),
        "train_loss": timed[-1]["train_loss"],
        "wall_s": round(time.perf_counter() - start, 1),
    }
    if args.smoke:
        record["versions"] = versions()
    dist.destroy_process_group()
    write_json(Path(args.case_out), record)
    return 0


SMOKE_PRESET = "cpu-tiny"  # the smoke case: one tiny step on the device, in seconds


def _run_case_process(
    args, preset: str, mode: str, limit: float, out_dir: Path, smoke: bool = False
) -> dict:
    """One case in a subprocess with a timeout; its log in ``out_dir/logs``; its record."""
    case = {"preset": preset, "mode": mode}
    log = out_dir / "logs" / ("smoke.log" if smoke else f"{preset}-{mode}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    case_out = log.with_suffix(".json")
    case_out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--case", preset, "--mode", mode, "--case-out", str(case_out)]
    cmd += ["--device", args.device, "--warmup", str(args.warmup), "--steps", str(args.steps)]
    cmd += ["--micro-batch", str(args.micro_batch), "--seq-len", str(args.seq_len)]
    if smoke:  # one tiny step: the environment, not the speed
        cmd += ["--smoke", "--warmup", "0", "--steps", "1", "--micro-batch", "2", "--seq-len", "64"]
    print(f"gpu_check: {preset} {mode} (at most {limit:.0f} s, log {log})", flush=True)
    with log.open("w") as sink:
        try:
            proc = subprocess.run(cmd, timeout=limit, stdout=sink, stderr=subprocess.STDOUT)
        except subprocess.TimeoutExpired:
            return {**case, "status": f"timeout after {limit:.0f} s", "log": str(log)}
    if proc.returncode != 0 or not case_out.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
        return {**case, "status": f"failed (rc {proc.returncode}): {tail[0]}", "log": str(log)}
    return {**json.loads(case_out.read_text()), "log": str(log)}


def run_all(args: argparse.Namespace) -> int:
    """The smoke case, then every (preset, mode) case; all results to ``args.out_dir``."""
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

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload: dict = {"mode": "gpu", "machine": machine.describe(), "mfu_goal": MFU_GOAL}
    smoke = _run_case_process(args, SMOKE_PRESET, "eager", SMOKE_TIMEOUT_S, out_dir, smoke=True)
    payload["smoke"] = smoke
    payload["versions"] = smoke.get("versions")
    if smoke.get("status") != "ok":
        print(f"gpu_check: the smoke case failed, nothing else run: {smoke['status']}")
        payload["cases"] = []
        write_json(out_dir / "gpu.json", payload)
        return 1
    print(f"  smoke: {summary(smoke)}; {version_line(smoke['versions'])}", flush=True)
    cases = []
    deadline = time.monotonic() + args.budget_s
    for preset in args.presets:
        for mode in args.modes:
            limit = min(CASE_TIMEOUT_S[mode], deadline - time.monotonic())
            if limit < 10:
                cases.append({"preset": preset, "mode": mode, "status": "skipped: budget spent"})
                continue
            cases.append(_run_case_process(args, preset, mode, limit, out_dir))
            print(f"  {summary(cases[-1])}", flush=True)
    payload["cases"] = cases
    write_json(out_dir / "gpu.json", payload)
    print(f"wrote {out_dir / 'gpu.json'}")
    return 0


def version_line(v: dict) -> str:
    """``torch 2.13.0 (pin >=2.13,<2.15), transformers 4.46.0 (OUTSIDE pin >=5.23,<6)``."""
    parts = [f"python {v['python']}", f"CUDA {v['cuda']}"]
    for name in PINNED:
        info = v[name]
        inside = "pin" if info["within_pin"] else "OUTSIDE pin"
        parts.append(f"{name} {info['version']} ({inside} {info['pin']})")
    return ", ".join(parts)


def summary(c: dict) -> str:
    if c.get("status") != "ok":
        return f"{c['preset']} {c['mode']}: {c['status']}"
    return (
        f"{c['preset']} {c['mode']}: {c['tokens_per_s']:,.0f} tokens/s, MFU {c['mfu']:.1%}, "
        f"peak memory {gib(c['peak_memory_bytes'])} GiB"
    )


NOT_RUN = """\
**Status: prepared, not yet run.** No GPU was drawn for the task that wrote this check, so there
are no GPU figures yet; the dry run below is computed on CPU. Run on a GPU machine (one H100 or
H200: about 8 minutes; the tree as it arrives, no .venv needed) from the repository root:

    bash benchmarks/gpu_check.sh            # results, logs and this page to $OUT (or --out-dir)

Then commit its `gpu.json` as `benchmarks/results/gpu.json` and regenerate this page with
`python3 benchmarks/gpu_check.py --render benchmarks/results/gpu.json`. On CPU,
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
        if data.get("versions"):
            lines += [f"Versions: {version_line(data['versions'])}.", ""]
        lines += ["MFU is against the card's dense bf16 peak (datasheet, else measured);"]
        lines += ["each figure is over the timed steps after warm-up.", ""]
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
        sized = sorted({r["preset"] for r in data["rows"]})
        lines += ["", "Micro batch the run picks from the device's memory (estimate within 85%): "]
        lines[-1] += "; ".join(
            f"{name} {micro_batch_for(name, 80e9)} on an 80 GB H100, "
            f"{micro_batch_for(name, 141e9)} on a 141 GB H200"
            for name in sized
        )
        lines[-1] += "."
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
    p.add_argument(
        "--out-dir",
        default=os.environ.get("OUT") or None,
        help="results, logs and the page: $OUT where set (a lent GPU machine), else under /tmp",
    )
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
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
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
    if not args.out_dir:
        args.out_dir = os.path.join(tempfile.gettempdir(), f"gpu_check.{os.getpid()}")
    if args.dry_run:
        out = Path(args.out_dir) / "gpu_dry_run.json"
        return dry_run(args.presets, [int(n) for n in args.gpus.split(",")], out)
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
