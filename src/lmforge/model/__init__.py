"""Decoder models from config: presets -> HF config -> ``LlamaForCausalLM``; sizes and FLOPs."""

from lmforge.model.builder import build_config, build_model, model_size, swiglu_hidden

__all__ = ["build_config", "build_model", "model_size", "swiglu_hidden"]
