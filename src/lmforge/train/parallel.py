"""Parallelism applied to a built model, chosen by ``TrainConfig.parallel``.

Kept apart from the model definition (torchtitan's split): the model code knows nothing of
ranks. ``single``: as is. ``ddp``: gradients all-reduced after backward. ``fsdp``: FSDP2
``fully_shard`` per decoder block and then the root, so parameters, gradients and optimizer state
are sharded over ranks and gathered block by block. Activation checkpointing (recompute each
block in backward) applies to any of them. ``compile`` compiles each decoder block in place, before
sharding, as torchtitan does: a whole-model compile breaks its graph at every FSDP2 block
boundary, and under dynamo transformers builds the full 4-D causal mask, so SDPA gets an
``attn_mask``, which rules out the flash kernel. With the blocks compiled and the root eager, the
mask stays ``None`` and SDPA runs ``is_causal=True``; the parameter names do not change.

Under FSDP a rank need not hold the whole model even at start: build it inside
``meta_init(cfg, rt)`` and only rank 0 allocates the seeded weights (the initial weights stay
those of a one-process run with the same seed); the other ranks build on the meta device,
allocate just their shards after ``fully_shard`` and receive them from rank 0.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn

from lmforge.config import TrainConfig
from lmforge.errors import TrainingError
from lmforge.train.distributed import Runtime
from lmforge.train.precision import resolve


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of an HF decoder (``model.model.layers``, GPT-2's
    ``transformer.h``; also under a peft wrapper)."""
    for module in model.modules():
        for attr in ("layers", "h"):
            layers = getattr(module, attr, None)
            if isinstance(layers, nn.ModuleList) and len(layers) > 0:
                return list(layers)
    raise TrainingError(f"{type(model).__name__}: no decoder block list (`layers`) to shard")


def compile_blocks(model: nn.Module) -> None:
    """``torch.compile`` each decoder block in place (``nn.Module.compile``: same module, same
    parameter names, so checkpoints and state dicts are those of the eager model)."""
    for block in decoder_blocks(model):
        block.compile()


def fsdp_casts_to_bf16(cfg: TrainConfig, rt: Runtime) -> bool:
    """Whether FSDP2's mixed-precision policy does the bf16 casting: then the loop's autocast
    stays off, so bf16 is applied once (both together cast every matmul input twice)."""
    return (
        rt.distributed
        and cfg.parallel == "fsdp"
        and rt.device.type == "cuda"
        and resolve(cfg.precision, rt.device).name == "bf16"
    )


def meta_init(cfg: TrainConfig, rt: Runtime) -> contextlib.AbstractContextManager:
    """Where to build the model: on the meta device (no storage) on ranks 1.. under FSDP, which
    ``parallelize`` fills from rank 0's weights; as usual everywhere else."""
    if rt.distributed and cfg.parallel == "fsdp" and not rt.is_main:
        return torch.device("meta")
    return contextlib.nullcontext()


def parallelize(model: nn.Module, cfg: TrainConfig, rt: Runtime) -> nn.Module:
    """Move ``model`` to the device and wrap it as ``cfg.parallel`` says; return what to train."""
    on_meta = any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    if not on_meta:
        model.to(rt.device)
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.compile:
        compile_blocks(model)
    if not rt.distributed:
        return (
            model  # one process: ddp and fsdp reduce to the plain model; one config runs anywhere
        )
    if cfg.parallel == "single":
        raise TrainingError(
            f"parallel=single but WORLD_SIZE={rt.world_size}: set parallel to ddp or fsdp, "
            "or start one process"
        )
    if cfg.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [rt.device.index] if rt.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if cfg.parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # bf16 compute with fp32 master weights and fp32 gradient reduction, on GPUs; on CPU
        # the loop's autocast casts instead (gloo has no fast bf16 path to gain from).
        mp = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if fsdp_casts_to_bf16(cfg, rt)
            else MixedPrecisionPolicy()
        )
        # Built under meta_init on some rank? Then rank 0's weights fill every rank's shards.
        flag = torch.tensor([float(on_meta)], device=rt.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        fill = bool(flag.item())
        full = model.state_dict() if fill and rt.is_main else {}  # before sharding: whole
        for block in decoder_blocks(model):
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        if fill:
            _fill_from_rank0(model, full, rt, on_meta)
        return model
    raise TrainingError(f"parallel={cfg.parallel!r}: expected single, ddp or fsdp")


def _fill_from_rank0(model: nn.Module, full: dict, rt: Runtime, on_meta: bool) -> None:
    """Allocate the local shards of a meta model and copy every rank's share of ``full``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if on_meta:
        model.to_empty(device=rt.device)  # shards only; tied weights stay one parameter
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full, options=opts)
    # Non-persistent buffers (RoPE's inv_freq) are in no state dict and to_empty left them
    # uninitialised: rank 0 built them, so they come from there too (they are small).
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


def unwrap(model: nn.Module) -> nn.Module:
    """The HF model under a DDP wrapper or ``torch.compile`` (FSDP2 shards in place)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every rank calls this; rank 0 gets the whole unsharded state on CPU, others an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(unwrap(model), options=opts)
