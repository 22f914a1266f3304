"""Sequence classification for the loop: labelled records -> token ids -> batches -> loss and
validation metrics.

- ``read_labelled``: one split's ``{"id", "text", "label"}`` records (bad ones name file:line);
- ``with_eos_appended`` / ``encode``: token ids exactly as the served pipeline produces them;
- ``collate``: right-padded ids and attention mask (the head pools the last non-pad token);
- ``ClassifyTask``: the ``lmforge.train.loop.Task`` (batches by step, loss, accuracy/macro-F1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmforge.config import FinetuneConfig
from lmforge.errors import DataError
from lmforge.metrics import macro_f1
from lmforge.train.data import GlobalBatchSampler
from lmforge.train.distributed import Runtime, all_reduce_sum


@dataclass
class Encoded:
    ids: list[list[int]]
    labels: np.ndarray


def read_labelled(path: Path, labels: list[str]) -> list[dict]:
    """Records ``{"id", "text", "label"}`` of one split; unknown labels are an error."""
    if not path.is_file():
        raise DataError(f"{path}: missing labelled split; run the augment stage first")
    rows = []
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text, label = row["text"], row["label"]
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{path}:{n}: expected a JSON record with text and label") from None
            if label not in labels:
                raise DataError(
                    f"{path}:{n}: label {label!r} is not one of the task's labels {labels} "
                    "(data.labels, or labelled/labels.json when derived from the training split); "
                    "fix the record, or add the label to data.labels and rerun validate"
                )
            rows.append({"text": str(text), "label": label})
    if not rows:
        raise DataError(f"{path}: no records")
    return rows


def with_eos_appended(tokenizer):
    """Make ``tokenizer`` append EOS to every text, in its saved ``tokenizer.json`` too, so that
    training, ``evaluate`` and the served MLflow pipeline all end an example with EOS: the token
    the head pools (the last non-pad one)."""
    from tokenizers.processors import TemplateProcessing

    eos, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    if eos is not None and eos_id is not None:
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, eos_id)]
        )
    return tokenizer


def encode(rows: list[dict], tokenizer, labels: list[str], max_length: int) -> Encoded:
    """Token ids as the served pipeline tokenizes them (EOS appended by ``with_eos_appended``),
    the text truncated so that the whole example fits in ``max_length``."""
    texts = [r["text"] for r in rows]
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return Encoded(ids, np.array([labels.index(r["label"]) for r in rows], dtype=np.int64))


def collate(ids: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded input ids and attention mask (the head pools the last non-pad token)."""
    width = max(len(s) for s in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, seq in enumerate(ids):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


class ClassifyTask:
    """Sequence classification of the labelled records (a ``lmforge.train.loop.Task``)."""

    def __init__(
        self,
        train: Encoded,
        val: Encoded,
        cfg: FinetuneConfig,
        rt: Runtime,
        pad_id: int,
        n_classes: int,
    ):
        self.train, self.val, self.rt, self.pad_id = train, val, rt, pad_id
        self.micro = cfg.micro_batch_size
        self.sampler = GlobalBatchSampler(
            len(train.ids), cfg.micro_batch_size, cfg.grad_accum_steps, rt.world_size, cfg.seed
        )
        n_val = min(len(val.ids), max(1, cfg.eval_batches) * cfg.micro_batch_size * rt.world_size)
        n_val -= n_val % rt.world_size  # equal forward passes per rank (FSDP gathers in each)
        self.val_ids = np.arange(n_val)[rt.rank :: rt.world_size]
        # The head's size, not the largest id seen: the model may predict a class that no
        # validation record has.
        self.n_classes = n_classes

    def _batch(self, data: Encoded, idx: np.ndarray) -> dict[str, torch.Tensor]:
        batch = collate([data.ids[i] for i in idx], self.pad_id, self.rt.device)
        batch["labels"] = torch.from_numpy(data.labels[idx]).to(self.rt.device)
        return batch

    def batch(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        return self._batch(self.train, self.sampler.indices(step, micro, self.rt.rank))

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        confusion = np.zeros((self.n_classes, self.n_classes))
        loss_sum = 0.0
        for start in range(0, len(self.val_ids), self.micro):
            batch = self._batch(self.val, self.val_ids[start : start + self.micro])
            out = model(**batch)
            loss_sum += float(out.loss) * len(batch["labels"])
            pred = out.logits.argmax(-1).cpu().numpy()
            np.add.at(confusion, (batch["labels"].cpu().numpy(), pred), 1)
        reduced = all_reduce_sum([loss_sum, *confusion.ravel().tolist()], self.rt.device)
        confusion = np.array(reduced[1:]).reshape(confusion.shape)
        n = max(confusion.sum(), 1.0)
        return {
            "val_loss": float(reduced[0] / n),
            "val_accuracy": float(np.trace(confusion) / n),
            "val_macro_f1": macro_f1(confusion),
        }
