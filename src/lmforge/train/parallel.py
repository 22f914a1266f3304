"""Parallelism applied to a built model, chosen by ``TrainConfig.parallel``.

Kept apart from the model definition (torchtitan's split): the model code knows nothing of
ranks. ``single``: as is. ``ddp``: gradients all-reduced after backward. ``fsdp``: FSDP2
``fully_shard`` per decoder block and then the root, so parameters, gradients and optimizer state
are sharded over ranks and gathered block by block. Activation checkpointing (recompute each
block in backward) applies to any of them.
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.config import TrainConfig
from lmforge.errors import TrainingError
from lmforge.train.distributed import Runtime


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of an HF decoder (``model.model.layers``; also under a peft wrapper)."""
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return list(layers)
    raise TrainingError(f"{type(model).__name__}: no decoder block list (`layers`) to shard")


def parallelize(model: nn.Module, cfg: TrainConfig, rt: Runtime) -> nn.Module:
    """Move ``model`` to the device and wrap it as ``cfg.parallel`` says; returns the model to train."""
    model.to(rt.device)
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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

        # bf16 compute with fp32 master weights and fp32 gradient reduction.
        mp = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if cfg.precision == "bf16" and rt.device.type == "cuda"
            else MixedPrecisionPolicy()
        )
        for block in decoder_blocks(model):
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    raise TrainingError(f"parallel={cfg.parallel!r}: expected single, ddp or fsdp")


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
