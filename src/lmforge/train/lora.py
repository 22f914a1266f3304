"""LoRA for fine-tuning: adapters on chosen linear layers while the rest stays frozen, merged
into the weights before saving so that no consumer of the model needs ``peft``."""

from __future__ import annotations

from torch import nn

from lmforge.config import FinetuneConfig


def apply_lora(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """LoRA adapters on ``finetune.lora_target_modules``; the classification head trains fully."""
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
    )
    return get_peft_model(model, lora)


def merged(model: nn.Module, cfg: FinetuneConfig, state: dict) -> nn.Module:
    """``model`` (a plain classifier) with the trained LoRA ``state`` loaded and merged in."""
    adapted = apply_lora(model, cfg)
    adapted.load_state_dict(state)
    return adapted.merge_and_unload()
