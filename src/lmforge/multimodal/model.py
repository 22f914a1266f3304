"""The fusion model: transformers' own vision-language classes, so it saves, loads and serves as a
standard model (``AutoModelForImageTextToText`` + ``AutoProcessor`` from its folder).

- ``build_fusion(mcfg, decoder_dir)``: ``LlavaForConditionalGeneration``: a CLIP vision
  transformer shaped by ``multimodal.vision_preset`` (patch embedding + blocks), a two-layer MLP
  projector into the decoder's width, and the decoder of ``decoder_dir`` (lmforge's pretrained
  model or any local causal LM) with its weights. The image token is added to the tokenizer
  (the embeddings grow by one row where needed); each image becomes (image_size / patch_size)^2
  tokens in front of the prompt. The processor (CLIP image processor + the tokenizer) is built
  from these numbers, nothing downloaded.
- ``load_vlm(folder, field)``: any local vision-language folder (LLaVA, PaliGemma, ...), checked
  like ``lmforge.model.base`` checks a causal LM: transformers' own classes, no ``auto_map``,
  offline, a processor beside the weights.
- ``Parts``: which modules are the vision encoder, the projector and the decoder, by name, so
  the training stages freeze the right ones whatever the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.config.multimodal import MultimodalConfig, load_vision_presets
from lmforge.errors import TrainingError
from lmforge.model.base import _offline, load_base, read_config

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
# An architecture's processor already ends the prompt with a newline (PaliGemma's does).
ENDS_PROMPT = {"paligemma"}
# token_type_ids of an answer: PaliGemma marks the suffix (attended causally) with 1.
ANSWER_TOKEN_TYPE = {"paligemma": 1}


def vision_shape(mcfg: MultimodalConfig) -> dict[str, int]:
    return dict(load_vision_presets()[mcfg.vision_preset])


def build_fusion(mcfg: MultimodalConfig, decoder_dir: Path, field: str = "multimodal.decoder"):
    """``(model, processor)``: a LLaVA model around the decoder of ``decoder_dir`` (module doc)."""
    from transformers import (
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    decoder, tokenizer = load_base(decoder_dir, field)
    if mcfg.image_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [mcfg.image_token]})
    image_id = tokenizer.convert_tokens_to_ids(mcfg.image_token)
    shape = vision_shape(mcfg)
    side, patch = shape["image_size"], shape["patch_size"]
    vision = CLIPVisionConfig(**shape, projection_dim=shape["hidden_size"])
    text = decoder.config
    text.use_cache = True  # the saved model generates; training passes use_cache=False
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_id,
        image_seq_length=(side // patch) ** 2,
        vision_feature_layer=-1,  # the last block: tiny towers have no spare layers
        vision_feature_select_strategy="default",  # CLS dropped: one token per patch
        tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
    )
    torch.manual_seed(mcfg.seed)
    model = LlavaForConditionalGeneration(config)
    _load_decoder(model, decoder)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    images = CLIPImageProcessorPil(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        image_token=mcfg.image_token,
        num_additional_image_tokens=1,  # the CLS token the strategy drops
    )
    return model, processor


def _load_decoder(model: nn.Module, decoder: nn.Module) -> None:
    """The decoder's trained weights into the fusion model's language model and output head."""
    missing, unexpected = model.model.language_model.load_state_dict(
        decoder.base_model.state_dict(), strict=False
    )
    if missing or unexpected:
        raise TrainingError(
            f"multimodal.decoder: the decoder's weights do not fit the fusion model's language "
            f"model (missing {missing[:3]}, unexpected {unexpected[:3]}); use a causal LM "
            "transformers builds as a base model plus output head (Llama, Qwen2, Mistral, GPT-2)"
        )
    head = decoder.get_output_embeddings()
    if head is not None and not model.config.tie_word_embeddings:
        model.get_output_embeddings().load_state_dict(head.state_dict())


def vlm_dir(path: str | Path, field: str) -> Path:
    """``path`` checked to be a vision-language folder of transformers' own classes."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    folder = Path(path).expanduser()
    fix = f"set {field} to a folder written by save_pretrained of a model and its processor"
    config = read_config(folder, field, fix)
    if config.get("model_type") not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise TrainingError(
            f"{field}: {folder} is a {config.get('model_type')!r} model, not an image-text-to-"
            "text model transformers ships (LLaVA, PaliGemma, ...); for a text-only decoder "
            "set multimodal.decoder instead"
        )
    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        raise TrainingError(
            f"{field}: {folder} has no processor (processor_config.json); save the model's "
            "processor into the same folder (processor.save_pretrained(folder))"
        )
    return folder


def load_vlm(path: str | Path, field: str = "multimodal.base_model"):
    """``(model, processor)`` of a checked local vision-language folder, fp32, on CPU."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = vlm_dir(path, field)
    _offline()
    local = {"local_files_only": True, "trust_remote_code": False}
    try:
        processor = AutoProcessor.from_pretrained(folder, **local)
        model = AutoModelForImageTextToText.from_pretrained(folder, **local, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise TrainingError(
            f"{field}: the model in {folder} does not load ({reason}); save it again with "
            "save_pretrained (model and processor)"
        ) from None
    tokenizer = processor.tokenizer
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, processor


def image_token(processor) -> str:
    token = getattr(processor, "image_token", None)
    if not token:
        raise TrainingError(
            f"{type(processor).__name__}: no image_token; lmforge prompts the model with its "
            "processor's image token (LLaVA-style processors have one)"
        )
    return token


@dataclass(frozen=True)
class Parts:
    """Module-name prefixes of the vision encoder, the projector and the decoder."""

    vision: tuple[str, ...]
    projector: tuple[str, ...]
    decoder: tuple[str, ...]

    def of(self, name: str) -> str:
        for part in ("vision", "projector", "decoder"):
            if any(name.startswith(p + ".") or name == p for p in getattr(self, part)):
                return part
        return "decoder"  # the output head and anything the text path owns


def parts(model: nn.Module) -> Parts:
    """Where the three parts sit in ``model`` (transformers names them alike across models)."""
    names = [n for n, _ in model.named_modules()]

    def find(*leaves: str) -> tuple[str, ...]:
        return tuple(n for n in names if n.rsplit(".", 1)[-1] in leaves and n.count(".") <= 1)

    found = Parts(
        vision=find("vision_tower", "vision_model", "visual"),
        projector=find("multi_modal_projector", "connector", "mm_projector"),
        decoder=find("language_model", "lm_head"),
    )
    if not (found.vision and found.projector and found.decoder):
        raise TrainingError(
            f"{type(model).__name__}: cannot tell its vision encoder, projector and decoder "
            f"apart (found {found}); lmforge trains LLaVA-style models (vision_tower, "
            "multi_modal_projector, language_model)"
        )
    return found


def set_trainable(model: nn.Module, trainable: set[str]) -> dict[str, int]:
    """Only the parts in ``trainable`` learn; returns the parameter count of each part."""
    where = parts(model)
    counts: dict[str, int] = {"vision": 0, "projector": 0, "decoder": 0}
    for name, param in model.named_parameters():
        part = where.of(name)
        param.requires_grad_(part in trainable)
        counts[part] += param.numel()
    return counts


def save(model: nn.Module, processor: Any, folder: Path) -> None:
    """The model and its processor as one standard folder (safetensors, configs, tokenizer)."""
    model.config.use_cache = True
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
