"""``lmforge generate --image PATH "prompt"``: an image-text model's answers about one picture.

The model is a local folder (an image-align / image-instruct output's ``model/``, or any
vision-language folder ``lmforge.multimodal.model.load_vlm`` accepts: transformers' own
classes, no code) or a registry URI (``models:/lmforge-vlm@challenger``), pinned to its version,
downloaded and checked by ``lmforge.registry.loading`` before anything in it loads. The
picture is any file Pillow decodes, converted to RGB; the processor resizes it as the model was
trained. Sampling follows ``lmforge.serve.generate.Sampling``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import DataError


@dataclass
class ImageAnswer:
    prompt: str
    text: str
    new_tokens: int


def open_image(path: Path):
    """The picture at ``path`` as RGB, or one DataError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"--image {path}: no such file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(
            f"--image {path}: not a picture Pillow can decode ({exc}); pass a PNG or JPEG"
        ) from None


def load(cfg, source: str):
    """``(model, processor)`` of a folder or a ``models:/`` URI (module doc)."""
    from lmforge.multimodal.model import load_vlm

    if not source.startswith("models:/"):
        return load_vlm(Path(source), "--model")
    from lmforge.errors import RegistryError
    from lmforge.multimodal.register import load_registered
    from lmforge.serve.generate import URI, resolve_version

    match = URI.match(source)
    if match is None:
        raise RegistryError(f"{source}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    _, mv = resolve_version(cfg, match["name"], match["alias"], match["version"])
    return load_registered(cfg, mv.name, str(mv.version))  # pinned: the alias may move


def answer(cfg, source: str, image: Path, prompts: list[str], sampling) -> list[ImageAnswer]:
    """One answer per prompt about ``image`` (greedy at temperature 0)."""
    import torch

    from lmforge.multimodal.batches import prompt_text

    picture = open_image(Path(image))
    model, processor = load(cfg, source)
    model.eval()
    tok = processor.tokenizer
    out = []
    for i, prompt in enumerate(prompts):
        text = prompt_text(processor, model.config.model_type, prompt)
        inputs = processor(images=[picture], text=[text], return_tensors="pt")
        inputs.pop("labels", None)
        torch.manual_seed(sampling.seed + i)
        greedy = sampling.temperature == 0
        extra = {} if greedy else {"temperature": sampling.temperature, "top_p": sampling.top_p}
        if not greedy and sampling.top_k:
            extra["top_k"] = sampling.top_k
        with torch.no_grad():
            ids = model.generate(
                **inputs,
                max_new_tokens=sampling.max_new_tokens,
                do_sample=not greedy,
                repetition_penalty=sampling.repetition_penalty,
                pad_token_id=tok.pad_token_id,
                **extra,
            )
        new = ids[0, inputs["input_ids"].shape[1] :]
        out.append(ImageAnswer(prompt, tok.decode(new, skip_special_tokens=True).strip(), len(new)))
    return out
