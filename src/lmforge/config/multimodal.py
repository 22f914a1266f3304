"""Config of the image-text path (``multimodal``): the data (``multimodal.data``, defined in
``image_data.py``), the fusion model, its two training stages and its evaluation.

The stages are ``multimodal.align`` (vision encoder and projector learn from captions, the
decoder frozen) and ``multimodal.instruct`` (question/answer pairs made from the captions, full
or LoRA); both are ``TrainConfig``s, so they run through the one training loop with its
checkpoints, precision and parallelism (docs/multimodal.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lmforge.config.image_data import ImageDataConfig
from lmforge.config.schema import Section, setting
from lmforge.config.train import TrainConfig

VISION_PRESETS_FILE = Path(__file__).resolve().parent.parent / "presets" / "vision.yaml"


def load_vision_presets() -> dict[str, dict[str, Any]]:
    with VISION_PRESETS_FILE.open() as fh:
        return yaml.safe_load(fh)


@dataclass
class StageConfig(TrainConfig):
    """What both training stages of the image-text model change from the loop's defaults."""

    name = "multimodal.stage"

    lr: float = setting(1e-3, "Peak learning rate (AdamW).", gt=0, le=1)
    warmup_steps: int = setting(20, "Linear warmup from 0 to lr over this many steps.", ge=0)
    parallel: Literal["single", "ddp", "fsdp"] = setting(
        "single", "Data parallelism across ranks: single process, DDP or FSDP2 (sharded)."
    )
    eval_every: int = setting(
        100, "Validate every this many steps (and at the end); 0: never.", ge=0
    )
    eval_batches: int = setting(8, "Validation batches per rank per evaluation.", ge=1)


@dataclass
class AlignConfig(StageConfig):
    """Stage 1: the vision encoder and projector learn to caption; the decoder stays frozen."""

    name = "multimodal.align"

    max_steps: int = setting(300, "Optimizer steps.", ge=1)
    lr: float = setting(2e-3, "Peak learning rate (AdamW).", gt=0, le=1)


@dataclass
class InstructConfig(StageConfig):
    """Stage 2: instruction tuning on image question/answer pairs made from the captions."""

    name = "multimodal.instruct"

    max_steps: int = setting(200, "Optimizer steps.", ge=1)
    method: Literal["full", "lora"] = setting(
        "full",
        "full: the decoder and projector train (the vision encoder as train_vision says); lora: "
        "low-rank adapters on the decoder's attention, the projector fully; merged before saving.",
    )
    lora_r: int = setting(8, "LoRA rank.", ge=1)
    lora_alpha: int = setting(16, "LoRA scaling numerator (scale = alpha / r).", ge=1)
    lora_dropout: float = setting(0.05, "Dropout on the LoRA input.", ge=0, lt=1)
    train_vision: bool = setting(
        False, "The vision encoder trains too (LLaVA keeps it frozen in this stage)."
    )
    questions_per_image: int = setting(
        3,
        "Question/answer pairs made from each training caption: a description request answered "
        "by the caption, and yes/no questions on whether a caption (its own or another "
        "image's) describes the picture.",
        ge=1,
        le=20,
    )


@dataclass
class MultimodalEvalConfig(Section):
    """Held-out scoring of the image-text model: caption perplexity, ROUGE-L, CIDEr, retrieval."""

    name = "multimodal.eval"

    max_pairs: int = setting(200, "Test pairs scored (a greedy caption each); 0: all.", ge=0)
    max_new_tokens: int = setting(24, "Tokens generated per caption (greedy, stops at EOS).", ge=1)
    retrieval_pool: int = setting(
        100,
        "Captions each test image is ranked against for recall@1/5 (its own among the first "
        "pool test captions); 0: all test captions.",
        ge=0,
    )
    thumbnails: int = setting(12, "Test images shown in the HTML report.", ge=0)
    min_recall_gain: float = setting(
        0.0,
        "The gate: recall@1 must exceed the text-only baseline's by more than this, or the "
        "report says failed and register refuses the model.",
        ge=-1,
        le=1,
    )


@dataclass
class MultimodalConfig(Section):
    """Images and text: image features projected into the decoder as a prefix of image tokens."""

    name = "multimodal"

    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    base_model: str | None = setting(
        None,
        "A local Hugging Face vision-language model folder (config.json, weights, processor; "
        "e.g. LLaVA, PaliGemma) to train from instead of building one. Null: build a LLaVA "
        "model from multimodal.decoder and multimodal.vision_preset.",
    )
    decoder: str | None = setting(
        None,
        "A local Hugging Face causal-LM folder (weights and tokenizer) the fusion model puts "
        "after the image tokens; null: the pretrain stage's model (outputs/pretrain/model).",
    )
    vision_preset: str = setting(
        "cpu-micro",
        "Vision-encoder shape from src/lmforge/presets/vision.yaml (cpu-micro, cpu-small, "
        "gpu-base): image size, patch size, width, blocks, heads.",
    )
    image_token: str = setting(
        "<image>", "The special token standing for the image in a prompt (added if new)."
    )
    caption_prompt: str = setting(
        "Describe the picture.", "The instruction a caption answers (alignment, evaluation)."
    )
    max_length: int = setting(
        48, "Text tokens of an answer, truncated (the image tokens come on top).", ge=2
    )
    seed: int = setting(1337, "Seed of the vision encoder's and projector's initial weights.")
    model_name: str = setting(
        "lmforge-vlm", "Registered model name of the image-text model (image-text-to-text)."
    )
    align: AlignConfig = field(default_factory=AlignConfig)
    instruct: InstructConfig = field(default_factory=InstructConfig)
    eval: MultimodalEvalConfig = field(default_factory=MultimodalEvalConfig)

    def check(self) -> None:
        presets = load_vision_presets()
        if self.vision_preset not in presets:
            self.fail(
                "vision_preset",
                f"unknown preset {self.vision_preset!r}; choose one of {', '.join(presets)} "
                f"(defined in {VISION_PRESETS_FILE.name})",
            )
        for key in ("base_model", "decoder"):
            value = getattr(self, key)
            if value is not None and not value.strip():
                self.fail(key, "empty path; set a model folder or null")
        if not self.image_token.strip():
            self.fail("image_token", "must be a non-empty token such as <image>")
