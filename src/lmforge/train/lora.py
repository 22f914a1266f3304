"""LoRA for fine-tuning: adapters on chosen layers while the rest stays frozen, merged into the
weights before saving so that no consumer of the model needs ``peft``.

Which layers: ``finetune.lora_target_modules``, or (empty) the projections of the model's own
attention blocks, found by walking its modules: ``q_proj, k_proj, v_proj, o_proj`` on Llama,
Qwen2 and Mistral, ``c_attn, c_proj`` on GPT-2, whose ``Conv1D`` stores weights transposed
(``fan_in_fan_out``).
"""

from __future__ import annotations

from torch import nn

from lmforge.config import FinetuneConfig
from lmforge.errors import TrainingError


def _is_projection(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, nn.Linear | Conv1D)


def attention_projections(model: nn.Module) -> list[str]:
    """Names of the linear layers directly inside the model's attention modules, in order."""
    names: list[str] = []
    for module in model.modules():
        if not type(module).__name__.endswith("Attention"):
            continue
        for name, child in module.named_children():
            if _is_projection(child) and name not in names:
                names.append(name)
    if not names:
        raise TrainingError(
            f"{type(model).__name__}: no attention projections found for LoRA; list the layers "
            "in finetune.lora_target_modules"
        )
    return names


def lora_targets(model: nn.Module, cfg: FinetuneConfig) -> list[str]:
    """``finetune.lora_target_modules`` checked against the model, or the attention projections."""
    if not cfg.lora_target_modules:
        return attention_projections(model)
    leaves = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if _is_projection(m)}
    missing = [t for t in cfg.lora_target_modules if t not in leaves]
    if missing:
        raise TrainingError(
            f"finetune.lora_target_modules: {missing} not in {type(model).__name__}, whose "
            f"linear layers are {sorted(leaves)}; list some of those or leave it empty (auto)"
        )
    return list(cfg.lora_target_modules)


def apply_lora(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """LoRA adapters on ``lora_targets``; the classification head trains fully."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers.pytorch_utils import Conv1D

    targets = lora_targets(model, cfg)
    conv1d = any(
        isinstance(m, Conv1D) and name.rsplit(".", 1)[-1] in targets
        for name, m in model.named_modules()
    )
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        fan_in_fan_out=conv1d,  # GPT-2's Conv1D holds (in, out) weights
    )
    return get_peft_model(model, lora)


def merged(model: nn.Module, cfg: FinetuneConfig, state: dict) -> nn.Module:
    """``model`` (a plain classifier) with the trained LoRA ``state`` loaded and merged in."""
    adapted = apply_lora(model, cfg)
    adapted.load_state_dict(state)
    return adapted.merge_and_unload()
