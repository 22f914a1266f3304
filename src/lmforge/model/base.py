"""A local Hugging Face causal-LM folder as the starting point of training.

``pretrain.init_from`` (continued pretraining) and ``finetune.base_model`` (a classifier straight
from it) name such a folder: ``config.json``, weights, and a tokenizer saved beside them. Nothing
is downloaded (``HF_HUB_OFFLINE`` and ``local_files_only``) and no code from the folder runs
(``trust_remote_code=False``; an ``auto_map`` is refused). Every problem a user can fix is a
``TrainingError`` naming the field, the folder and the fix.

Reuse ``load_base(path, field)`` wherever a step starts from a user's model (instruction tuning
too): it returns ``(model, tokenizer)``, checked, on CPU, in the saved dtype.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lmforge.errors import TrainingError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _offline() -> None:
    # A hub look-up would hang or fail on a cluster node; a local folder needs none.
    os.environ["HF_HUB_OFFLINE"] = "1"


def read_config(folder: Path, field: str, fix: str) -> dict:
    """``folder/config.json`` as a mapping, refused when missing, unreadable or naming custom
    code (``auto_map``); every error names ``field`` and ends with ``fix``."""
    if not folder.is_dir():
        raise TrainingError(f"{field}: {folder} is not a folder; {fix}")
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise TrainingError(f"{field}: {folder} has no config.json; {fix}") from None
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{field}: {folder}/config.json is unreadable ({exc}); {fix}") from None
    if config.get("auto_map"):
        raise TrainingError(
            f"{field}: {folder}/config.json names custom code (auto_map), which lmforge never "
            "runs; use a model whose architecture transformers ships"
        )
    return config


def base_dir(path: str | Path, field: str) -> Path:
    """``path`` checked to be a causal-LM folder of transformers' own classes, with a tokenizer."""
    folder = Path(path).expanduser()
    fix = f"set {field} to a folder written by save_pretrained (config.json, weights, tokenizer)"
    config = read_config(folder, field, fix)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type, archs = config.get("model_type"), config.get("architectures") or []
    heads = [a for a in archs if isinstance(a, str) and a.endswith(("ForCausalLM", "LMHeadModel"))]
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (archs and not heads):
        raise TrainingError(
            f"{field}: {folder} is a {model_type!r} model, not a causal language model "
            f"transformers can load (architectures {archs}); point "
            "it at a decoder such as Llama, Qwen2, Mistral or GPT-2"
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise TrainingError(
            f"{field}: {folder} has no tokenizer (tokenizer.json); save the model's tokenizer "
            "into the same folder (tokenizer.save_pretrained(folder))"
        )
    return folder


def base_config(path: str | Path, field: str):
    """The model's ``PretrainedConfig`` (checked folder, offline)."""
    from transformers import AutoConfig

    folder = base_dir(path, field)
    _offline()
    return AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)


def load_base_tokenizer(path: str | Path, field: str):
    """The folder's fast tokenizer, with an EOS (documents end with it) and a vocabulary that fits
    the model's embeddings. Without a pad token, EOS pads (GPT-2's convention)."""
    from transformers import AutoTokenizer

    folder = base_dir(path, field)
    _offline()
    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # tokenizers raises plain Exceptions for broken files
        reason = " ".join(str(exc).split())[:200]
        raise TrainingError(
            f"{field}: the tokenizer in {folder} does not load ({reason}); "
            "save it again with tokenizer.save_pretrained"
        ) from None
    if not getattr(tok, "is_fast", False):
        raise TrainingError(
            f"{field}: {folder} holds a slow (Python) tokenizer; lmforge needs its tokenizer.json "
            "(convert it: AutoTokenizer.from_pretrained(folder).save_pretrained(folder))"
        )
    if tok.eos_token_id is None:
        raise TrainingError(
            f"{field}: the tokenizer in {folder} has no eos_token; set one "
            "(tokenizer.eos_token = ...; save_pretrained) so documents and examples can end"
        )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    vocab = base_config(folder, field).get_text_config().vocab_size
    if len(tok) > vocab:
        raise TrainingError(
            f"{field}: the tokenizer in {folder} has {len(tok)} tokens but the model embeds "
            f"only {vocab} (config.json vocab_size): they come from different models; save the "
            "model's own tokenizer beside it, or resize its embeddings first"
        )
    return tok


def load_base_model(path: str | Path, field: str, *, on_meta: bool = False):
    """The causal LM of ``path`` (SDPA attention); ``on_meta``: its shape only, no storage (a
    rank that FSDP fills from rank 0)."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = base_dir(path, field)
    _offline()
    if on_meta:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(base_config(folder, field))
    try:
        return AutoModelForCausalLM.from_pretrained(
            folder,
            local_files_only=True,
            trust_remote_code=False,
            attn_implementation="sdpa",
            dtype=torch.float32,  # master weights; the loop's precision decides compute
        )
    except OSError as exc:
        raise TrainingError(
            f"{field}: the weights in {folder} do not load ({exc}); the folder needs "
            "model.safetensors (or its shards) from save_pretrained"
        ) from None


def load_base(path: str | Path, field: str = "finetune.base_model") -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a local causal-LM folder, both checked (see the module doc).

    ``field`` is the params key the path came from: every error names it."""
    tokenizer = load_base_tokenizer(path, field)
    return load_base_model(path, field), tokenizer


def same_folder(a: str | Path | None, b: str | Path | None) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()
