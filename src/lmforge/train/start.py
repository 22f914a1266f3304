"""Where a training step starts: a user's Hugging Face model or lmforge's own.

- ``starting_model(base_model, pretrained_dir)``: fine-tuning's ``(folder, tokenizer)``, the
  folder of ``base_model`` (``finetune.base_model``, checked by ``lmforge.model.base``) when
  set, else ``pretrained_dir/model``. Instruction tuning can start the same way (pass its own
  ``field``).
- ``continued_model``: continued pretraining (``pretrain.init_from``): the model, its config and
  size, after checking that the blocks were encoded with its tokenizer and fit its embeddings
  and positions; the ``model`` section's shape does not apply.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import DataError, TrainingError

log = logging.getLogger(__name__)
FIELD = "pretrain.init_from"


def starting_model(
    base_model: str | None,
    pretrained_dir: Path | None,
    field: str = "finetune.base_model",
) -> tuple[Path, Any]:
    """(model folder, its tokenizer); ``pretrained_dir`` is not read when ``base_model`` is set."""
    from lmforge.model.base import base_dir, load_base_tokenizer

    if base_model is not None:
        folder = base_dir(base_model, field)
        return folder, load_base_tokenizer(folder, field)
    if pretrained_dir is None:
        raise DataError(f"no pretrained model given; pass the pretrain output or set {field}")
    model_dir = Path(pretrained_dir) / "model"
    if not (model_dir / "config.json").is_file():
        raise DataError(
            f"{model_dir}: no pretrained model (config.json); run pretrain first, or set "
            f"{field} to a Hugging Face model folder"
        )
    from transformers import AutoTokenizer

    return model_dir, AutoTokenizer.from_pretrained(model_dir)


@dataclass
class Continued:
    model: Any  # the causal LM (on the meta device on a rank FSDP fills from rank 0)
    config: Any  # its PretrainedConfig
    seq_len: int  # the training context: tokenizer.block_size within the model's positions
    identity: dict[str, Any]  # what checkpoints must match to resume (the starting weights)


def continued_model(cfg, blocks_dir: Path, vocab_size: int, block_size: int, on_meta: bool):
    """The model of ``pretrain.init_from`` for continued pretraining, checked against the blocks
    (module doc); ``on_meta``: shape only, no storage."""
    from lmforge.model.base import base_config, base_dir, load_base_model, same_folder

    folder = base_dir(cfg.pretrain.init_from, FIELD)
    meta_path = Path(blocks_dir) / "meta.json"
    encoded_with = json.loads(meta_path.read_text()).get("tokenizer_from")
    if not same_folder(encoded_with, folder):
        source = encoded_with or "a tokenizer trained by lmforge"
        raise DataError(
            f"{meta_path}: the blocks were encoded with {source}, not {FIELD}'s {folder}; "
            "re-run the tokenize stage with the same pretrain.init_from (dvc repro tokenize)"
        )
    config = base_config(folder, FIELD)
    text = config.get_text_config()
    if cfg.model.vocab_size is not None and cfg.model.vocab_size != text.vocab_size:
        raise TrainingError(
            f"model.vocab_size: {cfg.model.vocab_size} conflicts with {FIELD}'s model "
            f"({text.vocab_size} tokens); set model.vocab_size: null (the model's own applies)"
        )
    if vocab_size > text.vocab_size:
        raise DataError(
            f"{meta_path}: {vocab_size} tokens but {FIELD}'s model embeds {text.vocab_size}; "
            "re-run the tokenize stage"
        )
    positions = getattr(text, "max_position_embeddings", None) or block_size
    seq_len = min(block_size, positions)
    log.info(
        "%s: continuing %s (%s layers, width %s) at context %d; the model section's shape "
        "(preset %s) does not apply",
        FIELD,
        type(config).__name__.removesuffix("Config"),
        text.num_hidden_layers,
        text.hidden_size,
        seq_len,
        cfg.model.preset,
    )
    model = load_base_model(folder, FIELD, on_meta=on_meta)
    model.config.use_cache = False  # training; generation turns it on per call
    from lmforge.train.step import file_identity

    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    identity = {"init_from": str(folder), **file_identity(folder / "config.json", *weights)}
    return Continued(model=model, config=model.config, seq_len=seq_len, identity=identity)
