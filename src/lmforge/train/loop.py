"""The one training loop of lmforge, used by pretraining and fine-tuning alike.

API::

    result = fit(model, task, cfg, rt, checkpoint_dir=..., fingerprint=..., on_log=...)

- ``model``: an ``nn.Module`` built identically (same seed) on every rank, or under FSDP on the
  meta device on ranks 1.. (``meta_init``); ``fit`` moves it to the device and wraps it as
  ``cfg.parallel`` says (``lmforge.train.parallel``).
- ``task``: what is trained, as a ``Task`` (below): its batches, its loss, its validation. The
  loop knows nothing of tokens, labels or heads. Batches are addressed by (step, micro step), so
  a resumed run continues the same data order from the step in the checkpoint alone.
- ``cfg``: a ``TrainConfig`` (steps, batch, schedule, precision, parallelism, checkpoints).
- ``rt``: the process's ``Runtime`` from ``lmforge.train.distributed.init_distributed``.

Each optimizer step: set the learning rate (warmup + cosine), accumulate ``grad_accum_steps``
micro batches under autocast (DDP/FSDP gradient sync only on the last), clip gradients, stop on a
non-finite loss or gradient norm (the divergence guard; weights and the last checkpoint stay
untouched), step AdamW; then log, validate and checkpoint on their own cadences. With
``stopping`` (a ``lmforge.train.best.BestKeeper``: fine-tuning) each evaluation is weighed by its
monitored metric, the best one's weights are kept, and the run ends early once ``patience``
evaluations passed without improvement (checkpointed at that step, so a rerun ends too).
A checkpoint found under ``checkpoint_dir`` with the same ``fingerprint`` is resumed from
automatically, even with another ``max_steps`` (the learning rate is a function of the step and
``max_steps``, so the schedule is recomputed for the new length), world size or micro-batch split
(DCP reshards); one line on stderr says where the run starts and what changed (``_start_line``).
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from lmforge import machine
from lmforge.config import TrainConfig
from lmforge.errors import TrainingError
from lmforge.train.checkpoint import Checkpointer, writer_lock
from lmforge.train.distributed import Runtime, all_reduce_mean
from lmforge.train.optim import build_optimizer, lr_at
from lmforge.train.parallel import fsdp_casts_to_bf16, parallelize
from lmforge.train.precision import Precision, announce, resolve


class Task(Protocol):
    """What the loop trains. Every rank calls every method (collectives inside are fine)."""

    def batch(self, step: int, micro: int) -> Any:
        """This rank's micro batch ``micro`` of optimizer step ``step``, on the device."""

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The micro batch's mean loss, a scalar tensor (the loop scales it for accumulation)."""

    def tokens(self, batch: Any) -> int:
        """Tokens in the micro batch, for tokens/s and MFU."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation metrics reduced over ranks (called in eval mode under ``no_grad``)."""


@dataclass
class FitResult:
    model: nn.Module  # the trained (wrapped) model
    step: int  # optimizer steps done
    history: list[dict[str, float]] = field(default_factory=list)  # logged rows, by step
    train_loss: float = math.nan  # mean over the last logging window
    tokens_seen: int = 0  # over all ranks
    tokens_per_s: float = 0.0  # over all ranks, training steps only
    mfu: float = 0.0
    peak_memory_bytes: int = 0  # this rank
    resumed_from: int | None = None
    train_seconds: float = 0.0
    precision: Precision | None = None  # what the loop computed in, and why
    stopping: Any = None  # the BestKeeper given to fit: best step, its weights, why it ended


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated memory on a GPU; the process's peak resident set on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def autocast(cfg: TrainConfig, device: torch.device, rt: Runtime | None = None):
    """bf16 autocast when ``cfg.precision`` resolves to bf16 on ``device`` (``auto`` included),
    unless FSDP2's mixed-precision policy already computes in bf16 on ``rt``'s ranks."""
    enabled = resolve(cfg.precision, device).autocast
    if rt is not None and fsdp_casts_to_bf16(cfg, rt):
        enabled = False
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _no_grad_sync(model: nn.Module, sync: bool):
    """Skip the gradient all-reduce/reduce-scatter on all but the last micro batch."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if hasattr(model, "no_sync") and not sync:  # DDP
        return model.no_sync()
    return contextlib.nullcontext()


class DivergenceGuard:
    """The divergence guard, kept on the device so that no step waits for the host.

    Each step's mean loss and gradient norm go into a sticky ``diverged`` flag on the device,
    handed to the fused AdamW as ``found_inf``: the kernel skips its update (and its step count)
    while the flag is set, so the weights stay the last finite ones whatever the host has not read
    yet. The host reads the steps' numbers later (``check``) and reports the first bad one.
    """

    def __init__(self, device: torch.device):
        self.diverged = torch.zeros((), dtype=torch.bool, device=device)
        self.pending: list[tuple[int, torch.Tensor]] = []

    def step(self, step: int, stats: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        self.diverged |= ~torch.isfinite(stats).all()
        optimizer.found_inf = self.diverged.float()
        self.pending.append((step, stats))

    def check(self, everything: bool) -> tuple[int, float, float] | None:
        """(step, loss, grad norm) of the first non-finite step read; all but the newest step
        unless ``everything``, whose read waits for the device."""
        ready, self.pending = (
            (self.pending, []) if everything else (self.pending[:-1], self.pending[-1:])
        )
        for step, stats in ready:
            loss, norm = stats.tolist()
            if not (math.isfinite(loss) and math.isfinite(norm)):
                self.pending = []
                return step, loss, norm
        return None


def fit(
    model: nn.Module,
    task: Task,
    cfg: TrainConfig,
    rt: Runtime,
    *,
    checkpoint_dir: Path | None = None,
    **options: Any,
) -> FitResult:
    """Train ``model`` on ``task`` (see ``_fit``), holding ``checkpoint_dir``'s writer lock
    throughout: a second run checkpointing into the same folder is refused, not interleaved."""
    if checkpoint_dir is None or cfg.ckpt_every <= 0:
        return _fit(model, task, cfg, rt, checkpoint_dir=checkpoint_dir, **options)
    with writer_lock(checkpoint_dir, rt):
        return _fit(model, task, cfg, rt, checkpoint_dir=checkpoint_dir, **options)


def _fit(
    model: nn.Module,
    task: Task,
    cfg: TrainConfig,
    rt: Runtime,
    *,
    checkpoint_dir: Path | None = None,
    fingerprint: str = "",
    flops_per_token: float = 0.0,
    peak_flops: float = 0.0,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
    stopping: Any = None,
) -> FitResult:
    """Train ``model`` on ``task`` for ``cfg.max_steps`` optimizer steps (resuming if possible),
    or until ``stopping`` (a ``BestKeeper``) says the validation metric stopped improving."""
    torch.manual_seed(cfg.seed + rt.rank)  # dropout differs per rank; init was seeded before
    precision = resolve(cfg.precision, rt.device)
    if rt.is_main:
        announce(precision)
        if rt.device.type == "cpu":
            machine.announce()
    model = parallelize(model, cfg, rt)  # compiles each block first when cfg.compile
    optimizer = build_optimizer(model, cfg)
    result = FitResult(model=model, step=0, precision=precision, stopping=stopping)

    ckpt = None
    if checkpoint_dir is not None and cfg.ckpt_every > 0:
        ckpt = Checkpointer(checkpoint_dir, rt, cfg.keep_last, fingerprint)
        ckpt.prepare()
        found = ckpt.latest(at_most=cfg.max_steps)
        if found is not None:
            folder, manifest = found
            ckpt.load(folder, model, optimizer)
            state = manifest["state"]
            result.step = result.resumed_from = int(manifest["step"])
            result.history = state["history"]
            result.tokens_seen = int(state["tokens_seen"])
            result.train_seconds = float(state["train_seconds"])
            logged = [r for r in result.history if "train_loss" in r]
            if logged:
                last = logged[-1]
                result.train_loss, result.tokens_per_s, result.mfu = (
                    last["train_loss"],
                    last["tokens_per_s"],
                    last["mfu"],
                )
        if rt.is_main:
            print(_start_line(ckpt, found, _run_shape(cfg, rt)), file=sys.stderr, flush=True)
    last_good = f"step {result.step}" if ckpt and result.resumed_from else "none"
    if stopping is not None and result.history:  # its best and its count, from the history
        stopping.resume(result.history, ckpt.folder if ckpt else None, rt)

    bar = None
    if progress and rt.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=result.step, desc="train", dynamic_ncols=True)

    model.train()
    window_loss = torch.zeros((), device=rt.device)
    window_steps, window_tokens, window_time = 0, 0, 0.0
    guard = DivergenceGuard(rt.device)
    for step in range(result.step, cfg.max_steps):
        if stopping is not None and stopping.exhausted:
            break  # a rerun of a run that stopped early: nothing more to train
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr

        loss_sum = torch.zeros((), device=rt.device)
        tokens = 0
        for micro in range(cfg.grad_accum_steps):
            batch = task.batch(step, micro)
            last_micro = micro == cfg.grad_accum_steps - 1
            with _no_grad_sync(model, last_micro), autocast(cfg, rt.device, rt):
                loss = task.loss(model, batch) / cfg.grad_accum_steps
            loss.backward()
            loss_sum += loss.detach()
            tokens += task.tokens(batch)

        clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        stats = all_reduce_mean(torch.stack([loss_sum.float(), grad_norm.float()]))
        guard.step(step, stats, optimizer)  # on the device: no host wait
        optimizer.step()  # skipped by the fused kernel once the guard has seen a non-finite step
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        window_loss += stats[0]
        log_now = done % max(1, cfg.log_every) == 0 or done == cfg.max_steps
        eval_now = cfg.eval_every > 0 and (done % cfg.eval_every == 0 or done == cfg.max_steps)
        save_now = ckpt is not None and (done % cfg.ckpt_every == 0 or done == cfg.max_steps)
        # The host reads the guard one step late, and at once where it logs, evaluates or
        # saves: nothing non-finite is logged or checkpointed, and no step waits for the last.
        diverged = guard.check(everything=log_now or eval_now or save_now)
        if diverged is not None:
            bad_step, step_loss, norm = diverged
            raise TrainingError(
                f"training diverged at step {bad_step}: loss={step_loss}, grad norm={norm}. "
                f"The weights were not updated; last good checkpoint: {last_good}"
                + (f" in {checkpoint_dir}" if ckpt else "")
                + ". Lower lr, raise warmup_steps or grad_clip, or use precision=fp32."
            )
        if log_now and rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)  # the window's time is the device's
        dt = time.perf_counter() - t0
        result.step = done
        result.tokens_seen += tokens * rt.world_size
        result.train_seconds += dt
        window_steps += 1
        window_tokens += tokens * rt.world_size
        window_time += dt
        if bar is not None:
            bar.update(1)

        row: dict[str, float] = {}
        if log_now:
            step_loss, norm = stats.tolist()
            if bar is not None:
                bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}", refresh=False)
            tps = window_tokens / window_time if window_time > 0 else 0.0
            mfu = tps * flops_per_token / (peak_flops * rt.world_size) if peak_flops else 0.0
            result.train_loss, result.tokens_per_s, result.mfu = (
                window_loss.item() / window_steps,
                tps,
                mfu,
            )
            row.update(
                train_loss=result.train_loss, lr=lr, grad_norm=norm, tokens_per_s=tps, mfu=mfu
            )
            window_loss = torch.zeros((), device=rt.device)
            window_steps, window_tokens, window_time = 0, 0, 0.0
        if eval_now:
            model.eval()
            with torch.no_grad(), autocast(cfg, rt.device, rt):
                row.update(task.evaluate(model))
            model.train()
        if row:
            row["peak_memory_bytes"] = float(peak_memory_bytes(rt.device))
            result.history.append({"step": float(done), **row})
            if on_log is not None and rt.is_main:
                on_log(done, row)
        stop_now = False
        if eval_now and stopping is not None:
            stopping.observe(done, row, model)
            stop_now = stopping.exhausted
            save_now = save_now or (ckpt is not None and stop_now)
        if save_now:
            state = {
                "history": result.history,
                "tokens_seen": result.tokens_seen,
                "train_seconds": result.train_seconds,
                "data_position": {"next_step": done, "micro_steps": done * cfg.grad_accum_steps},
                "run_shape": _run_shape(cfg, rt),
            }
            if stopping is not None:
                stopping.persist(ckpt.folder, rt)  # before the checkpoint that refers to it
            ckpt.save(done, model, optimizer, state)
            if stopping is not None:
                stopping.forget_older(ckpt.folder, rt)
            last_good = f"step {done}"
        if stop_now:
            break
    if bar is not None:
        bar.close()
    result.peak_memory_bytes = peak_memory_bytes(rt.device)
    return result


def _run_shape(cfg: TrainConfig, rt: Runtime) -> dict[str, int]:
    """What a resumed run may change (``lmforge.train.step.RESUMABLE``), as the checkpoint
    records it so that resuming can say what changed."""
    return {
        "max_steps": cfg.max_steps,
        "world_size": rt.world_size,
        "micro_batch_size": cfg.micro_batch_size,
        "grad_accum_steps": cfg.grad_accum_steps,
        "global_batch": cfg.micro_batch_size * cfg.grad_accum_steps * rt.world_size,
    }


def _start_line(ckpt: Checkpointer, found: tuple[Path, dict] | None, now: dict) -> str:
    """One line: where the run resumes from and what changed since, or why it starts fresh."""
    if found is None:
        if ckpt.others:
            return (
                f"starting fresh in {ckpt.folder}: the {ckpt.others} checkpoint(s) in "
                f"{ckpt.home} are of another model, data, seed or optimizer setting (or were "
                "written by an lmforge before resumable runs with other settings); they stay"
            )
        return f"starting fresh (checkpoints in {ckpt.folder})"
    folder, manifest = found
    before = manifest["state"].get("run_shape")
    if before is None:
        return f"resuming from {folder} (written by an older lmforge)"
    changes = []
    if before["max_steps"] != now["max_steps"]:
        changes.append(
            f"max_steps {before['max_steps']} -> {now['max_steps']}: "
            f"schedule recomputed for {now['max_steps']} steps"
        )
    if before["world_size"] != now["world_size"]:
        changes.append(f"world size {before['world_size']} -> {now['world_size']}: resharded")
    split = ("micro_batch_size", "grad_accum_steps")
    if any(before[k] != now[k] for k in split):
        changes.append(
            "micro batch x accumulation "
            f"{before['micro_batch_size']}x{before['grad_accum_steps']} -> "
            f"{now['micro_batch_size']}x{now['grad_accum_steps']}"
        )
    if before["global_batch"] != now["global_batch"]:
        changes.append(
            f"global batch {before['global_batch']} -> {now['global_batch']}: the data "
            "order is now that of the new batch size, so this epoch sees some sequences "
            "twice or skips some; keep micro_batch_size x grad_accum_steps x processes to avoid"
        )
    return f"resuming from {folder}" + (f" ({'; '.join(changes)})" if changes else "")
