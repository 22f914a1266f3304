"""AdamW with decoupled weight decay on matrices only, and the warmup + cosine schedule.

The schedule is a pure function of the step, so a resumed run needs no scheduler state beyond
the step number that the checkpoint records.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmforge.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at ``max_steps``."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """Weight decay on 2-D+ weights (matmuls, embeddings), none on norms and biases.

    The fused kernel (CPU and CUDA have one), also on FSDP2's DTensor shards: DTensor runs it on
    each local shard (AdamW is element-wise), as torchtitan does; ``foreach`` there cost a
    kernel launch per tensor group on GPUs.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)
