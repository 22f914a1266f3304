"""Decoder models from config: presets -> HF config -> ``LlamaForCausalLM``; sizes and FLOPs.

A user's own Hugging Face model folder as the start: ``lmforge.model.base``."""

from lmforge.model.builder import (
    build_config,
    build_model,
    measured_size,
    model_size,
    swiglu_hidden,
)

__all__ = ["build_config", "build_model", "measured_size", "model_size", "swiglu_hidden"]
