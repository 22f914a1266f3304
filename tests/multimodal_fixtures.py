"""A tiny captioned-image set in the validated layout (``lmforge.data.images.pairs``), drawn
here: coloured shapes on white, captioned by colour and shape, so a model that looks at the
picture can tell the captions apart and one that does not cannot."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from pathlib import Path

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60)}
SHAPES = ("square", "circle", "triangle")


def draw(colour: str, shape: str, side: int, shift: int):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (side, side), (255, 255, 255))
    pen = ImageDraw.Draw(img)
    lo, hi = side // 6 + shift, side - side // 6 - 1 - shift
    box = (lo, lo, hi, hi)
    rgb = COLOURS[colour]
    if shape == "square":
        pen.rectangle(box, fill=rgb)
    elif shape == "circle":
        pen.ellipse(box, fill=rgb)
    else:
        pen.polygon([(lo, hi), (hi, hi), ((lo + hi) // 2, lo)], fill=rgb)
    return img


def write_split(split_dir: Path, items: list[tuple[str, str, int]], side: int = 32) -> None:
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for n, (colour, shape, shift) in enumerate(items):
        buf = io.BytesIO()
        draw(colour, shape, side, shift).save(buf, format="PNG")
        image_id = hashlib.sha256(buf.getvalue()).hexdigest()[:16]
        (split_dir / "images" / f"{image_id}.png").write_bytes(buf.getvalue())
        caption = f"a {colour} {shape}"
        rec = {"id": image_id, "image": f"images/{image_id}.png", "caption": caption,
               "source": f"fixture:{n}"}  # fmt: skip
        lines.append(json.dumps(rec) + "\n")
    (split_dir / "pairs.jsonl").write_text("".join(lines))


def write_image_set(root: Path, side: int = 32) -> Path:
    """``root/{train,val,test}``: 9 colour x shape kinds; train has each at 3 sizes."""
    kinds = list(itertools.product(COLOURS, SHAPES))
    write_split(root / "train", [(c, s, k) for c, s in kinds for k in (0, 2, 4)], side)
    write_split(root / "val", [(c, s, 1) for c, s in kinds], side)
    write_split(root / "test", [(c, s, 3) for c, s in kinds], side)
    return root


def make_paligemma(root: Path, tokenizer_dir: Path) -> Path:
    """A tiny random PaliGemma (SigLIP vision, Gemma decoder) with its processor, saved in
    ``root``: a vision-language architecture other than LLaVA, built here from configs."""
    import torch
    from transformers import (
        AutoTokenizer,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipVisionConfig,
    )
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.bos_token = tok.eos_token  # PaliGemma's processor puts BOS after the image tokens
    ids = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
           "bos_token_id": tok.eos_token_id}  # fmt: skip
    text = dict(model_type="gemma", vocab_size=(len(tok) + 7) // 8 * 8, hidden_size=32,
                intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, max_position_embeddings=128, **ids)  # fmt: skip
    vision = SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=1, num_attention_heads=2)  # fmt: skip
    config = PaliGemmaConfig(vision_config=vision, text_config=text, projection_dim=32,
                             image_token_index=tok.convert_tokens_to_ids("<image>"))  # fmt: skip
    torch.manual_seed(0)
    PaliGemmaForConditionalGeneration(config).save_pretrained(root)
    images = SiglipImageProcessorPil(size={"height": 32, "width": 32}, image_seq_length=16)
    PaliGemmaProcessor(image_processor=images, tokenizer=tok).save_pretrained(root)
    return root
