"""The ``tokenize`` stage: a byte-level BPE tokenizer trained on the training split, and every
split packed into fixed-length blocks that training memory-maps.

Layout of ``out_dir`` (the contract the trainer reads, see docs/architecture.md):

    tokenizer/          loads with ``transformers.PreTrainedTokenizerFast.from_pretrained``
    blocks/{split}.bin  a flat array of ``n_blocks * block_size`` tokens of ``meta["dtype"]``:
                        ``np.memmap(path, dtype=meta["dtype"]).reshape(-1, block_size)``
    blocks/meta.json    {"dtype", "block_size", "vocab_size", "eos_id", "pad_id",
                         "splits": {split: {"n_blocks", "n_tokens", "n_records"}}}
    metrics.json        token counts per split

A split's text is ``corpus/{split}.jsonl`` and, with ``tokenizer.include_labelled_text``, the
texts of ``labelled/{split}.jsonl`` (labels dropped): the language model then learns the
fine-tuning domain too (domain-adaptive pretraining), and only ever trains on the train split.
The tokenizer sees at most about ``train_max_mb`` of the training split (a hash-sampled share of
its records). Records are concatenated, each followed by EOS, and cut into blocks; the last
partial block of a split is dropped (its tokens are counted in ``dropped_tokens``). Encoding
runs through ``datasets.map`` (batched, ``num_proc`` workers) on Arrow files in a scratch
folder, and packing streams Arrow chunks to disk, so memory stays flat as the corpus grows.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.config import Config, TokenizerConfig
from lmforge.data.pii import PLACEHOLDERS
from lmforge.data.records import Kind, read_records
from lmforge.data.split import SPLITS, hash_unit
from lmforge.data.track import log_outputs, tracked
from lmforge.errors import DataError
from lmforge.outputs import atomic_output_dir, write_json


@dataclass
class TokenizeResult:
    vocab_size: int
    block_size: int
    tokens: dict[str, int]  # split -> tokens (EOS included) before packing
    blocks: dict[str, int]  # split -> packed blocks
    out_dir: str


Source = tuple[Path, Kind]  # a JSON-lines file and its record schema


def split_sources(augmented_dir: Path, split: str, cfg: TokenizerConfig) -> list[Source]:
    """The files whose texts make up ``split``'s language-model text (module doc)."""
    sources: list[Source] = [(Path(augmented_dir) / "corpus" / f"{split}.jsonl", "corpus")]
    if cfg.include_labelled_text:
        sources.append((Path(augmented_dir) / "labelled" / f"{split}.jsonl", "labelled"))
    for path, kind in sources:
        if not path.is_file():
            hint = " (or set tokenizer.include_labelled_text: false)" if kind == "labelled" else ""
            raise DataError(f"{path}: missing; run the augment stage first{hint}.")
    return sources


def training_texts(sources: list[Source], max_mb: float) -> Iterator[str]:
    """The texts of ``sources``; over ``max_mb`` in all, a share of the records chosen by a hash
    of their id (deterministic, independent of file order)."""
    size = sum(path.stat().st_size for path, _ in sources)
    keep = 1.0 if max_mb <= 0 or size <= max_mb * 1e6 else max_mb * 1e6 / size
    for path, kind in sources:
        # Labelled records are read as text only: their labels never reach the language model.
        for rec in read_records(path, kind, allow_empty=True):
            if rec["text"] and (keep >= 1.0 or hash_unit(rec["id"], "tokenizer-sample") < keep):
                yield rec["text"]


def special_tokens(cfg: TokenizerConfig) -> list[str]:
    """``tokenizer.special_tokens`` and the personal-data placeholders of the validate stage
    (``<|email|>``, ...): each stays one token, never split into bytes the model could learn to
    complete into an address."""
    extra = [p for p in PLACEHOLDERS.values() if p not in cfg.special_tokens]
    return [*cfg.special_tokens, *extra]


def train_tokenizer(cfg: TokenizerConfig, texts: Iterator[str]):
    """Byte-level BPE (GPT-2 style: no unknown tokens, any byte sequence round-trips)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=special_tokens(cfg),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def save_tokenizer(cfg: TokenizerConfig, tok, out: Path):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=cfg.eos_token,
        bos_token=cfg.eos_token,  # GPT-2 convention: one boundary token
        pad_token=cfg.pad_token,
        unk_token="<|unk|>" if "<|unk|>" in cfg.special_tokens else None,
        model_max_length=cfg.block_size,
        extra_special_tokens=[p for p in PLACEHOLDERS.values() if p not in cfg.special_tokens],
    )
    fast.save_pretrained(str(out))
    return fast


def tokenizer_for(cfg: Config, train_sources: list[Source], out: Path):
    """(fast tokenizer saved in ``out``, its ``tokenizers`` backend): the one of
    ``pretrain.init_from`` (continued pretraining must read text as that model learned it), else
    byte-level BPE trained on the training split."""
    if cfg.pretrain.init_from is not None:
        from lmforge.model.base import load_base_tokenizer

        fast = load_base_tokenizer(cfg.pretrain.init_from, "pretrain.init_from")
        fast.save_pretrained(str(out))
        return fast, fast.backend_tokenizer
    tcfg = cfg.tokenizer
    tok = train_tokenizer(tcfg, training_texts(train_sources, tcfg.train_max_mb))
    return save_tokenizer(tcfg, tok, out), tok


def _encode_split(tok, eos_id: int, sources: list[Source], cfg: TokenizerConfig, cache: Path):
    """``datasets``: the split's texts -> a dataset with one ``input_ids`` list per record."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    parts = []
    for path, _ in sources:
        if path.stat().st_size:
            part = datasets.Dataset.from_json(str(path), cache_dir=str(cache), keep_in_memory=False)
            parts.append(part.select_columns(["text"]))
    if not parts:
        return None
    ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    name = f"{sources[0][0].stem}-ids.arrow"

    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = [t or "" for t in batch["text"]]
        return {
            "input_ids": [
                [*e.ids, eos_id] for e in tok.encode_batch(texts, add_special_tokens=False)
            ]
        }

    n_proc = min(cfg.num_proc, max(1, len(ds) // 64))  # workers cost ~1 s each: not for tiny splits
    # In one process the tokenizer's own threads encode; forked workers must not use them (the
    # tokenizer already ran threads in this process), so they encode one thread each.
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    if n_proc > 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return ds.map(
            encode,
            batched=True,
            batch_size=cfg.batch_size,
            num_proc=n_proc if n_proc > 1 else None,
            remove_columns=ds.column_names,
            cache_file_name=str(cache / name),
            desc=None,
        )
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


def pack(ds, block_size: int, dtype: np.dtype, dest: Path) -> dict[str, int]:
    """Stream the token lists into ``dest`` as whole blocks; the partial tail is dropped."""
    n_tokens = n_written = 0
    carry = np.empty(0, dtype=dtype)
    with dest.open("wb") as fh:
        if ds is not None:
            for chunk in ds.data.column("input_ids").chunks:
                flat = chunk.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
                n_tokens += len(flat)
                buf = np.concatenate([carry, flat])
                full = len(buf) // block_size * block_size
                buf[:full].tofile(fh)
                n_written += full
                carry = buf[full:]
    return {
        "n_blocks": n_written // block_size,
        "n_tokens": n_tokens,
        "n_records": 0 if ds is None else len(ds),
        "dropped_tokens": n_tokens - n_written,
    }


def tokenize(cfg: Config, augmented_dir: Path, out_dir: Path) -> TokenizeResult:
    """Train the tokenizer on the training split (or take ``pretrain.init_from``'s) and pack
    every split into ``out_dir``."""
    with tracked(
        cfg, "tokenize", sections=("tokenizer",), inputs={"augmented": Path(augmented_dir)}
    ):
        tcfg = cfg.tokenizer
        sources = {split: split_sources(Path(augmented_dir), split, tcfg) for split in SPLITS}
        with atomic_output_dir(out_dir) as tmp:
            fast, tok = tokenizer_for(cfg, sources["train"], tmp / "tokenizer")
            eos_id, pad_id = fast.eos_token_id, fast.pad_token_id
            vocab_size = len(fast)
            dtype = np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)
            blocks = tmp / "blocks"
            blocks.mkdir()
            cache = tmp / ".datasets-cache"
            splits: dict[str, dict[str, int]] = {}
            for split in SPLITS:
                ds = _encode_split(tok, eos_id, sources[split], tcfg, cache)
                splits[split] = pack(ds, tcfg.block_size, dtype, blocks / f"{split}.bin")
                del ds
            shutil.rmtree(cache, ignore_errors=True)
            if splits["train"]["n_blocks"] == 0:
                raise DataError(
                    f"{sources['train'][0][0]}: {splits['train']['n_tokens']} tokens make no "
                    "block of "
                    f"tokenizer.block_size={tcfg.block_size}; add data or lower block_size."
                )
            meta: dict[str, Any] = {
                "dtype": dtype.name,
                "block_size": tcfg.block_size,
                "vocab_size": vocab_size,
                "eos_id": eos_id,
                "pad_id": pad_id,
                "tokenizer_from": cfg.pretrain.init_from,  # pretrain checks it starts there
                "splits": splits,
            }
            write_json(blocks / "meta.json", meta)
            metrics = {"vocab_size": vocab_size, **splits}
            write_json(tmp / "metrics.json", metrics)
        log_outputs(metrics, [Path(out_dir) / "blocks" / "meta.json"])
    return TokenizeResult(
        vocab_size=vocab_size,
        block_size=tcfg.block_size,
        tokens={s: d["n_tokens"] for s, d in splits.items()},
        blocks={s: d["n_blocks"] for s, d in splits.items()},
        out_dir=str(out_dir),
    )
