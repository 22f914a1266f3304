"""Model builder: presets -> HF config -> model; counts and FLOPs agree with the real module."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM, MistralForCausalLM

from lmforge.config import ModelConfig, load_config, load_presets
from lmforge.errors import ConfigError, TrainingError
from lmforge.model import build_config, build_model, model_size, swiglu_hidden


def tiny(**kw) -> ModelConfig:
    base = dict(n_layers=2, d_model=64, n_heads=4, max_seq_len=32, vocab_size=100)
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("kv_heads", [None, 2])
def test_param_count_matches_the_module(tie, kv_heads):
    cfg = build_config(tiny(tie_embeddings=tie, n_kv_heads=kv_heads))
    model = build_model(cfg, seed=0)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert model_size(cfg).n_params == sum(unique.values())
    assert model.config.num_key_value_heads == (kv_heads or 4)


def test_flops_per_token_counts_matmuls_and_attention():
    cfg = build_config(tiny())
    size = model_size(cfg, seq_len=32)
    d, ff, layers, vocab = 64, swiglu_hidden(64), 2, 100
    matmul = layers * (4 * d * d + 3 * d * ff) + vocab * d
    assert size.flops_per_token == 6 * matmul + 12 * layers * d * 32
    # A local window caps the attention term.
    windowed = model_size(build_config(tiny(sliding_window=8)), seq_len=32)
    assert windowed.flops_per_token == 6 * matmul + 12 * layers * d * 8


def test_same_seed_same_weights_and_a_working_forward():
    cfg = build_config(tiny())
    a, b = build_model(cfg, seed=3), build_model(cfg, seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    ids = torch.randint(0, 100, (2, 16))
    out = a(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 16, 100)
    assert abs(out.loss.item() - torch.log(torch.tensor(100.0)).item()) < 0.5  # near uniform


def test_llama_by_default_mistral_with_a_sliding_window():
    assert isinstance(build_model(build_config(tiny())), LlamaForCausalLM)
    local = build_model(build_config(tiny(sliding_window=8)))
    assert isinstance(local, MistralForCausalLM)
    assert local.config.sliding_window == 8
    # Tokens farther back than the window cannot change a position's output.
    local.eval()
    ids = torch.randint(0, 100, (1, 24))
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % 100
    with torch.no_grad():
        x, y = local(input_ids=ids).logits, local(input_ids=changed).logits
    assert torch.allclose(x[0, 20:], y[0, 20:], atol=1e-5)
    assert not torch.allclose(x[0, 1:4], y[0, 1:4], atol=1e-5)


def test_vocab_from_tokenizer_and_errors_name_the_field():
    assert build_config(tiny(vocab_size=None), vocab_size=77).vocab_size == 77
    with pytest.raises(TrainingError, match=r"model\.vocab_size"):
        build_config(tiny(vocab_size=None))
    # Shape rules are the model section's own: checked when the section is built.
    with pytest.raises(ConfigError, match=r"model\.n_heads: 4 must divide model.d_model 66"):
        tiny(d_model=66)
    with pytest.raises(ConfigError, match=r"model\.n_kv_heads: 3 must divide model.n_heads 4"):
        tiny(n_kv_heads=3)


@pytest.mark.parametrize("preset", list(load_presets()))
def test_every_preset_builds_a_config_of_the_advertised_size(preset):
    cfg = load_config(None, [f"model.preset={preset}"])
    hf = build_config(cfg.model, vocab_size=32000)
    size = model_size(hf)
    expected = {"gpu-125m": 125e6, "gpu-1b": 1.2e9, "gpu-7b": 6.7e9}.get(preset)
    if expected:
        assert 0.7 * expected < size.n_params < 1.4 * expected, size.n_params
    assert size.flops_per_token > 6 * size.n_non_embedding


def _tiny(**kw):
    return build_config(
        ModelConfig(n_layers=2, d_model=64, n_heads=4, max_seq_len=32, vocab_size=256, **kw)
    )


def _loss_and_grads(model, ids, bf16: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def test_block_norms_hand_bf16_to_their_projections_once():
    # Under bf16 autocast the blocks' norm outputs are cast once (not once per projection); the
    # forward is bit-identical to the stock model's, gradients agree to bf16 precision.
    model, stock = build_model(_tiny(), seed=0), build_model(_tiny(), seed=0, cast_once=False)
    seen = []
    hook = model.model.layers[0].input_layernorm.register_forward_hook(
        lambda m, a, out: seen.append(out.dtype)
    )
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    loss, grads = _loss_and_grads(model, ids, bf16=True)
    stock_loss, stock_grads = _loss_and_grads(stock, ids, bf16=True)
    hook.remove()
    assert seen == [torch.bfloat16]
    assert torch.equal(loss, stock_loss)
    for name, grad in grads.items():
        error = (grad - stock_grads[name]).norm() / stock_grads[name].norm()
        assert error < 0.02, name
    # Without autocast nothing changes: the fp32 model is the stock one, as saved.
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, stock(input_ids=ids).logits)
    assert model.state_dict().keys() == stock.state_dict().keys()


def test_bf16_step_matches_fp32_within_tolerance():
    # The bf16 path (autocast over lmforge's model) against fp32 on the same weights and batch.
    model = build_model(_tiny(), seed=0)
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(1))
    loss16, grads16 = _loss_and_grads(model, ids, bf16=True)
    loss32, grads32 = _loss_and_grads(model, ids, bf16=False)
    assert loss16.dtype == loss32.dtype == torch.float32
    assert abs(loss16.item() - loss32.item()) < 0.01 * loss32.item()
    for name, grad in grads32.items():
        cos = torch.nn.functional.cosine_similarity(grad.flatten(), grads16[name].flatten(), dim=0)
        assert cos > 0.99, name
