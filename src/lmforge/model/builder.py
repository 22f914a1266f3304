"""Llama-style decoders built from the typed ``model`` config with Hugging Face classes.

The result is a plain ``transformers`` model, so ``save_pretrained`` gives a standard model
directory that MLflow, peft and the fine-tuning stage load as they are. RMSNorm, RoPE, SwiGLU and
SDPA attention come from ``LlamaForCausalLM``; a ``sliding_window`` selects ``MistralForCausalLM``,
the same architecture with local attention (Llama's config has no window).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)

from lmforge.config import ModelConfig
from lmforge.errors import TrainingError


def swiglu_hidden(d_model: int, multiple_of: int = 64) -> int:
    """SwiGLU's usual width: 8/3 * d_model (the same parameters as a 4x GELU MLP), rounded up."""
    width = int(8 * d_model / 3)
    return multiple_of * ((width + multiple_of - 1) // multiple_of)


def build_config(
    mcfg: ModelConfig,
    vocab_size: int | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
) -> PretrainedConfig:
    """The HF config of ``mcfg``; ``vocab_size`` (the tokenizer's) fills a ``None`` in ``mcfg``."""
    vocab = mcfg.vocab_size or vocab_size
    if not vocab:
        raise TrainingError("model.vocab_size: unknown; set it or train with a tokenizer")
    kv_heads = mcfg.n_kv_heads or mcfg.n_heads  # shape rules: ModelConfig.check
    common = dict(
        vocab_size=vocab,
        hidden_size=mcfg.d_model,
        intermediate_size=mcfg.d_ff or swiglu_hidden(mcfg.d_model),
        num_hidden_layers=mcfg.n_layers,
        num_attention_heads=mcfg.n_heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=mcfg.max_seq_len,
        initializer_range=mcfg.init_std,
        tie_word_embeddings=mcfg.tie_embeddings,
        attention_dropout=mcfg.dropout,
        rope_parameters={"rope_type": "default", "rope_theta": mcfg.rope_theta},
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=False,  # training; generation turns it on per call
    )
    if mcfg.sliding_window:
        return MistralConfig(**common, sliding_window=mcfg.sliding_window)
    return LlamaConfig(**common)


def build_model(
    config: PretrainedConfig, seed: int | None = None, cast_once: bool = True
) -> PreTrainedModel:
    """A freshly initialised causal LM with SDPA attention (same seed, same weights); with
    ``cast_once`` its block norms cast once under autocast (``cast_block_norms_once``)."""
    if seed is not None:
        torch.manual_seed(seed)
    cls = MistralForCausalLM if isinstance(config, MistralConfig) else LlamaForCausalLM
    config._attn_implementation = "sdpa"
    model = cls(config)
    return cast_block_norms_once(model) if cast_once else model


def _to_autocast_dtype(module, args, output):
    """Forward hook: the output in the autocast dtype while autocast is on, else unchanged."""
    kind = output.device.type
    if torch.is_autocast_enabled(kind):
        return output.to(torch.get_autocast_dtype(kind))
    return None


def cast_block_norms_once(model: PreTrainedModel) -> PreTrainedModel:
    """Under bf16 autocast, hand each block's RMSNorm output to its projections in bf16.

    Autocast casts the (fp32) normed activations once per projection that reads them: three
    times before q/k/v, twice before gate/up, and backward casts each of their gradients back;
    at width 384 these casts were the largest group of copies in a bf16 step. Casting once at the
    norm gives the projections the very same bf16 input (the forward is bit-identical); backward
    sums the projections' bf16 input gradients before the one cast back. A forward hook, so the
    modules, parameters and saved format stay Hugging Face's; without autocast it does nothing.
    The final norm is left alone: its output is also the model's ``last_hidden_state``.
    """
    for layer in model.model.layers:
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.register_forward_hook(_to_autocast_dtype)
    return model


@dataclass(frozen=True)
class ModelSize:
    """Parameter counts and training FLOPs per token (forward + backward)."""

    n_params: int  # unique parameters (tied embeddings counted once)
    n_embedding: int  # token embedding parameters
    flops_per_token: float

    @property
    def n_non_embedding(self) -> int:
        return self.n_params - self.n_embedding


def model_size(config: PretrainedConfig, seq_len: int | None = None) -> ModelSize:
    """Analytic counts from the config (PaLM appendix B): 6 N + 12 L d T FLOPs per token.

    N counts every weight a token's matmuls touch: the blocks and the output projection (the
    embedding lookup is not a matmul; a tied output layer still costs its matmul).
    """
    d, n_layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    head_dim = d // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    attn = d * d * 2 + d * kv * 2  # q, o and k, v projections
    mlp = 3 * d * config.intermediate_size
    norms = 2 * d
    per_layer = attn + mlp + norms
    embedding = vocab * d
    head = 0 if config.tie_word_embeddings else vocab * d
    n_params = embedding + n_layers * per_layer + d + head
    seq = seq_len or config.max_position_embeddings
    window = getattr(config, "sliding_window", None)
    attended = min(seq, window) if window else seq
    matmul_params = n_layers * (attn + mlp) + vocab * d
    flops = 6 * matmul_params + 12 * n_layers * d * attended
    return ModelSize(n_params=n_params, n_embedding=embedding, flops_per_token=float(flops))


def measured_size(model, seq_len: int) -> ModelSize:
    """Counts of any HF decoder (a user's model: GPT-2, Qwen2, ...) from its parameters, and the
    same 6 N + 12 L d T FLOPs rule: N is every weight but the input embedding (positions too),
    plus the output projection's matmul when it is tied."""
    config = model.config.get_text_config()
    seen: set[int] = set()
    n_params = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n_params += p.numel()
    embedding = model.get_input_embeddings().weight.numel()
    positions = 0
    for name, module in model.named_modules():
        if name.endswith(("wpe", "embed_positions")) and hasattr(module, "weight"):
            positions += module.weight.numel()
    d, n_layers = config.hidden_size, config.num_hidden_layers
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is model.get_input_embeddings().weight
    matmul_params = n_params - embedding - positions + (config.vocab_size * d if tied else 0)
    window = getattr(config, "sliding_window", None)
    attended = min(seq_len, window) if window else seq_len
    flops = 6 * matmul_params + 12 * n_layers * d * attended
    return ModelSize(n_params=n_params, n_embedding=embedding, flops_per_token=float(flops))
