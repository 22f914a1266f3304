"""Packed token blocks (the tokenize stage's ``blocks/``) and a resumable, rank-aware sampler.

``blocks/meta.json``: {"dtype", "block_size", "vocab_size", "eos_id", "pad_id",
"splits": {split: {"n_blocks", "n_tokens"}}}; ``blocks/{split}.bin`` holds ``n_blocks *
block_size`` tokens, memory-mapped here (never read whole).

``GlobalBatchSampler`` is stateless: the indices of (step, micro step, rank) are a function of the
seed alone, so resuming needs only the step number, and every world size that keeps the global
batch (micro batch x accumulation x ranks) sees the same sequences at the same step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmforge.errors import DataError


@dataclass(frozen=True)
class BlocksMeta:
    dtype: str
    block_size: int
    vocab_size: int
    eos_id: int | None
    pad_id: int | None
    splits: dict[str, dict[str, int]]


def read_meta(blocks_dir: Path) -> BlocksMeta:
    path = Path(blocks_dir) / "meta.json"
    try:
        raw = json.loads(path.read_text())
        return BlocksMeta(
            dtype=str(raw["dtype"]),
            block_size=int(raw["block_size"]),
            vocab_size=int(raw["vocab_size"]),
            eos_id=raw.get("eos_id"),
            pad_id=raw.get("pad_id"),
            splits={k: dict(v) for k, v in raw["splits"].items()},
        )
    except FileNotFoundError:
        raise DataError(f"{path}: missing; run the tokenize stage first") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: not a blocks meta file ({exc!r}); re-run tokenize") from None


def check_tokenizer(tok_dir: Path, meta: BlocksMeta) -> None:
    """Load the tokenizer that the model folder will carry; a broken one names its file.

    Pretrain copies ``tok_dir`` into the model, and fine-tuning, evaluation and serving load it
    from there: a garbage file must stop pretraining now, not a later stage with a traceback.
    """
    from tokenizers import Tokenizer

    path = Path(tok_dir) / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"{path}: missing; run the tokenize stage first")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust loader raises plain Exception subclasses
        raise DataError(
            f"{path}: not a loadable tokenizer ({' '.join(str(exc).split())[:200]}); "
            "re-run the tokenize stage (dvc repro tokenize)"
        ) from None
    if tok.get_vocab_size() > meta.vocab_size:
        raise DataError(
            f"{path}: vocabulary of {tok.get_vocab_size()} tokens, but the blocks were encoded "
            f"with {meta.vocab_size}: the tokenizer and blocks/ come from different runs; "
            "re-run the tokenize stage"
        )


class BlockDataset:
    """One split of packed blocks, memory-mapped: ``ds[i]`` is block i as int64 tokens."""

    def __init__(self, blocks_dir: Path, split: str):
        self.meta = read_meta(blocks_dir)
        if split not in self.meta.splits:
            raise DataError(
                f"{blocks_dir}/meta.json: no split {split!r} (has {', '.join(self.meta.splits)})"
            )
        path = Path(blocks_dir) / f"{split}.bin"
        n_blocks = int(self.meta.splits[split]["n_blocks"])
        expected = n_blocks * self.meta.block_size * np.dtype(self.meta.dtype).itemsize
        if not path.exists() or path.stat().st_size != expected:
            size = path.stat().st_size if path.exists() else "missing"
            raise DataError(
                f"{path}: expected {expected} bytes ({n_blocks} blocks), found {size}; "
                "re-run tokenize"
            )
        if n_blocks == 0:
            raise DataError(f"{path}: split {split!r} has no blocks; add data or lower block_size")
        self.tokens = np.memmap(path, dtype=self.meta.dtype, mode="r").reshape(
            n_blocks, self.meta.block_size
        )

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def batch(self, indices: list[int] | np.ndarray, seq_len: int | None = None) -> torch.Tensor:
        """Blocks ``indices`` as a (batch, seq_len) int64 tensor (the first ``seq_len`` tokens)."""
        rows = self.tokens[np.asarray(indices)]
        if seq_len is not None:
            rows = rows[:, :seq_len]
        return torch.from_numpy(rows.astype(np.int64))


class GlobalBatchSampler:
    """Indices of a stream of seeded permutations (one per epoch), cut into global batches.

    Global step ``s`` takes stream positions ``[s*G, (s+1)*G)`` with G = micro x accum x world;
    inside a step, micro step ``m`` of rank ``r`` takes its own contiguous slice.
    """

    def __init__(self, n_items: int, micro_batch: int, grad_accum: int, world_size: int, seed: int):
        if n_items <= 0:
            raise DataError("the training split is empty")
        self.n, self.micro, self.accum, self.world, self.seed = (
            n_items,
            micro_batch,
            grad_accum,
            world_size,
            seed,
        )
        self._perms: dict[int, np.ndarray] = {}

    @property
    def global_batch(self) -> int:
        return self.micro * self.accum * self.world

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.clear()
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=gen).numpy()
        return self._perms[epoch]

    def indices(self, step: int, micro: int, rank: int) -> np.ndarray:
        start = step * self.global_batch + (micro * self.world + rank) * self.micro
        positions = np.arange(start, start + self.micro)
        return np.array([self._perm(int(p // self.n))[p % self.n] for p in positions])

    def epoch_of(self, step: int) -> float:
        return step * self.global_batch / self.n
