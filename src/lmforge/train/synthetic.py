"""A synthetic tokenize-stage output (``tokenizer/`` + ``blocks/``) for tests and benchmarks.

Tokens follow a seeded sparse Markov chain (each token has a few likely successors), so a model
that learns the transitions reaches a perplexity near the branching factor while a unigram
model stays near the vocabulary size: a loss curve that means something, without any corpus.
The layout is the tokenize stage's contract (docs/architecture.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPECIALS = ["<|endoftext|>", "<|pad|>", "<|unk|>"]


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer over ``w0 w1 ...`` that ``PreTrainedTokenizerFast`` loads."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for i in range(vocab_size - len(SPECIALS)):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>", unk_token="<|unk|>"
    )
    fast.save_pretrained(str(folder))


def write_synthetic_tokenized(
    out_dir: Path,
    *,
    vocab_size: int = 128,
    block_size: int = 32,
    n_blocks: dict[str, int] | None = None,
    branching: int = 3,
    seed: int = 0,
) -> Path:
    """Write ``out_dir/{tokenizer,blocks}``; return ``out_dir``."""
    out_dir = Path(out_dir)
    n_blocks = n_blocks or {"train": 256, "validation": 32, "test": 32}
    rng = np.random.default_rng(seed)
    first = len(SPECIALS)
    words = np.arange(first, vocab_size)
    successors = rng.choice(words, size=(vocab_size, branching))
    probs = rng.dirichlet(np.ones(branching), size=vocab_size)
    blocks = out_dir / "blocks"
    blocks.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, count in n_blocks.items():
        n = count * block_size
        seq = np.empty(n, dtype=np.uint16)
        cur = int(rng.choice(words))
        for i in range(n):
            if rng.random() < 0.01:
                cur = 0  # an end-of-text token now and then, as packing leaves them
            else:
                cur = int(successors[cur, rng.choice(branching, p=probs[cur])])
            seq[i] = cur
        seq.tofile(blocks / f"{split}.bin")
        splits[split] = {"n_blocks": count, "n_tokens": n}
    meta = {
        "dtype": "uint16",
        "block_size": block_size,
        "vocab_size": vocab_size,
        "eos_id": 0,
        "pad_id": 1,
        "splits": splits,
    }
    (blocks / "meta.json").write_text(json.dumps(meta, indent=2))
    write_tokenizer(out_dir / "tokenizer", vocab_size)
    return out_dir
