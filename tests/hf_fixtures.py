"""Tiny Hugging Face causal LMs of three architectures, saved by the tests themselves.

- ``make_hf_model(root, arch)``: a randomly initialised Llama, Qwen2 or GPT-2 (hidden 32, 2
  layers, 64 positions) saved with ``save_pretrained`` into ``root``, with a byte-level BPE
  tokenizer trained here on a few sentences (nothing is downloaded). The GPT-2 tokenizer has no
  pad token, as GPT-2's own has not; the embeddings are a little larger than the vocabulary, as
  real models' are.
- ``hf_models``: one such folder per architecture (session-scoped).
- ``hf_augmented``: an augment-stage output (``corpus/`` and ``labelled/`` splits) written by
  hand, for the tokenize and finetune stages.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from data_fixtures import corpus_records, write_jsonl
from mlflow_fixtures import toy_text, write_labelled

__all__ = ["ARCHS", "hf_augmented", "hf_models", "make_hf_model"]

ARCHS = ("llama", "qwen2", "gpt2")


def tiny_tokenizer(arch: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(arch)
    lines = [toy_text(label, rng) for label in ("ham", "spam") * 40]
    lines += [r["text"] for r in corpus_records("tales", 10)]
    specials = ["<|endoftext|>"] if arch == "gpt2" else ["<|endoftext|>", "<|pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    pad = {} if arch == "gpt2" else {"pad_token": "<|pad|>"}
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", **pad)


def hf_config(arch: str, vocab: int, eos: int, pad: int | None):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    ids = {"eos_token_id": eos, "bos_token_id": eos, "pad_token_id": pad}
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=64, **ids)
    shape = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1 if arch == "qwen2" else 2,  # grouped-query on one of them
        max_position_embeddings=64,
        **ids,
    )
    return Qwen2Config(**shape) if arch == "qwen2" else LlamaConfig(**shape)


def make_hf_model(root: Path, arch: str) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer(arch)
    vocab = (len(tokenizer) + 7) // 8 * 8  # padded embeddings, as real checkpoints have
    config = hf_config(arch, vocab, tokenizer.eos_token_id, tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-models")
    return {arch: make_hf_model(root / arch, arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def hf_augmented(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hf-augmented")
    for split, n in (("train", 40), ("validation", 10), ("test", 10)):
        write_jsonl(root / "corpus" / f"{split}.jsonl", corpus_records(f"c-{split}", n))
    write_labelled(root)
    (root / "report.json").write_text(json.dumps({"note": "written by hf_fixtures"}))
    return root
