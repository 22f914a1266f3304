"""The two training stages of the image-text model, through the one loop of the text models.

- ``align(cfg, pretrained_dir, data_dir, out_dir)``: the fusion model (``multimodal.base_model``,
  else a LLaVA model built around ``multimodal.decoder`` or the pretrain output) learns to
  caption: the vision encoder and the projector train, the decoder stays frozen, so the image
  tokens are pushed into the space the decoder already reads.
- ``instruct(cfg, align_dir, data_dir, out_dir)``: instruction tuning on question/answer pairs
  made from the captions (``qa_pairs``): the decoder and projector train (full) or LoRA adapters
  on the decoder's attention plus the whole projector (merged before saving).

``data_dir`` holds the split folders ``train/`` and ``val/`` of ``lmforge.data.images.pairs``.
Both write ``out_dir/model/`` (a standard model folder with its processor: ``load_vlm`` and
``AutoModelForImageTextToText`` load it), ``checkpoints/model/`` (resumable, as every run),
``metrics.json`` and, for instruct, ``pairs/{train,val}.jsonl`` (the pairs trained on).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from lmforge.config import Config
from lmforge.outputs import atomic_output_dir, write_json
from lmforge.tracking import is_number
from lmforge.train import step
from lmforge.train.distributed import barrier
from lmforge.train.loop import fit
from lmforge.train.parallel import full_state_dict

DESCRIBE = ("Describe the picture.", "What does this picture show?", "What is in this image?")
MATCH = 'Does this caption fit the picture: "{caption}"? Answer yes or no.'


@dataclass
class StageResult:
    stage: str  # align | instruct
    method: str
    steps: int
    val_loss: float  # mean loss per answer token, validation examples
    val_perplexity: float
    trainable_params: int
    total_params: int
    vision_params: int
    projector_params: int
    decoder_params: int
    train_examples: int
    val_examples: int
    truncated_answers: int
    model_dir: str
    architecture: str
    resumed_from: int | None = None
    precision: str = ""


def examples_of(split_dir: Path, prompt: str):
    from lmforge.data.images.pairs import read_pairs
    from lmforge.multimodal.batches import Example

    return [Example(p.image_path, prompt, p.caption) for p in read_pairs(split_dir)]


def qa_pairs(split_dir: Path, per_image: int, seed: int):
    """Question/answer pairs made from a split's captions: a description request answered by the
    caption, then alternately "does this caption fit?" with its own caption (yes) and with
    another image's (no), so an answer can only be right by looking at the picture."""
    from lmforge.data.images.pairs import read_pairs
    from lmforge.multimodal.batches import Example

    pairs = read_pairs(split_dir)
    rng = random.Random(seed)
    out = []
    for i, pair in enumerate(pairs):
        out.append(Example(pair.image_path, rng.choice(DESCRIBE), pair.caption))
        for k in range(1, per_image):
            others = [p for j, p in enumerate(pairs) if j != i and p.caption != pair.caption]
            if k % 2 == 1 or not others:
                out.append(Example(pair.image_path, MATCH.format(caption=pair.caption), "yes"))
            else:
                other = rng.choice(others).caption
                out.append(Example(pair.image_path, MATCH.format(caption=other), "no"))
    return out


def starting_fusion(cfg: Config, pretrained_dir: Path | None):
    """``(model, processor, identity)``: the base VLM, or the fusion model around a decoder."""
    from lmforge.multimodal.model import build_fusion, load_vlm
    from lmforge.train.start import starting_model

    mcfg = cfg.multimodal
    if mcfg.base_model is not None:
        model, processor = load_vlm(mcfg.base_model)
        folder = Path(mcfg.base_model)
    else:
        folder, _ = starting_model(mcfg.decoder, pretrained_dir, "multimodal.decoder")
        model, processor = build_fusion(mcfg, folder)
    weights = step.file_identity(folder / "config.json", *sorted(folder.glob("*.safetensors")))
    identity = {"start": str(folder), "vision": mcfg.vision_preset, "seed": mcfg.seed, **weights}
    return model, processor, identity


def align(cfg: Config, pretrained_dir: Path | None, data_dir: Path, out_dir: Path, on_log=None):
    """Stage 1 (module doc)."""
    mcfg = cfg.multimodal
    data_dir = Path(data_dir)

    def start():
        return starting_fusion(cfg, pretrained_dir)

    train = examples_of(data_dir / "train", mcfg.caption_prompt)
    val = examples_of(data_dir / "val", mcfg.caption_prompt)
    return _stage(cfg, "align", mcfg.align, start, {"vision", "projector"}, train, val, out_dir,
                  on_log)  # fmt: skip


def instruct(cfg: Config, align_dir: Path, data_dir: Path, out_dir: Path, on_log=None):
    """Stage 2 (module doc)."""
    from lmforge.multimodal.model import load_vlm

    mcfg, data_dir = cfg.multimodal, Path(data_dir)
    folder = Path(align_dir) / "model"

    def start():
        model, processor = load_vlm(folder, "the align stage's model")
        weights = step.file_identity(folder / "config.json", folder / "model.safetensors")
        return model, processor, {"start": str(folder), **weights}

    trainable = {"projector", "decoder"} | ({"vision"} if mcfg.instruct.train_vision else set())
    per = mcfg.instruct.questions_per_image
    train = qa_pairs(data_dir / "train", per, mcfg.instruct.seed)
    val = qa_pairs(data_dir / "val", per, mcfg.instruct.seed + 1)
    with atomic_output_dir(Path(out_dir) / "pairs") as tmp:
        for name, examples in (("train", train), ("val", val)):
            rows = [
                {"image": str(e.image), "prompt": e.prompt, "answer": e.answer} for e in examples
            ]
            (tmp / f"{name}.jsonl").write_text("".join(_json_line(r) for r in rows))
    return _stage(cfg, "instruct", mcfg.instruct, start, trainable, train, val, out_dir, on_log)


def _json_line(row: dict) -> str:
    import json

    return json.dumps(row, ensure_ascii=False) + "\n"


def _stage(cfg, stage, tcfg, start, trainable, train_ex, val_ex, out_dir: Path, on_log):
    from lmforge.multimodal.batches import ImageTextTask, encode
    from lmforge.multimodal.model import save, set_trainable

    out_dir = Path(out_dir)
    mcfg = cfg.multimodal
    model, processor, identity = start()
    model_type = model.config.model_type
    train = encode(processor, model_type, train_ex, mcfg.max_length)
    val = encode(processor, model_type, val_ex, mcfg.max_length)
    tok = processor.tokenizer
    pad_id = next(i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None)
    digest = hashlib.sha256(
        repr((train.ids, train.labels, [str(p) for p in train.images])).encode()
    )
    lora = getattr(tcfg, "method", "full") == "lora"
    with step.process_group(tcfg) as rt:
        with step.tracked(cfg, f"multimodal-{stage}", ("multimodal",), out_dir, rt) as tracker:
            sizes = set_trainable(model, trainable)
            if lora:
                model = _with_lora(model, tcfg)
            n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
            run = fit(
                model,
                ImageTextTask(train, val, tcfg, rt, pad_id),
                tcfg,
                rt,
                checkpoint_dir=step.checkpoint_dir(out_dir, "model"),
                fingerprint=step.fingerprint(
                    tcfg,
                    {"stage": stage, "parts": sorted(trainable), **identity},
                    digest.hexdigest(),
                ),
                on_log=step.both(tracker.step_logger(""), on_log),
            )
            state = full_state_dict(run.model)
            last = ([r for r in run.history if "val_loss" in r] or [{}])[-1]
            result = StageResult(
                stage=stage,
                method="lora" if lora else "full",
                steps=run.step,
                val_loss=last.get("val_loss", math.nan),
                val_perplexity=last.get("val_perplexity", math.nan),
                trainable_params=n_train,
                total_params=sum(sizes.values()),
                vision_params=sizes["vision"],
                projector_params=sizes["projector"],
                decoder_params=sizes["decoder"],
                train_examples=len(train.ids),
                val_examples=len(val.ids),
                truncated_answers=train.truncated,
                model_dir=str(out_dir / "model"),
                architecture=type(model.get_base_model() if lora else model).__name__,
                resumed_from=run.resumed_from,
                precision=run.precision.name,
            )
            if rt.is_main:
                fresh, processor, _ = start()  # the trained state into an unwrapped copy
                if lora:
                    set_trainable(fresh, trainable)
                    adapted = _with_lora(fresh, tcfg)
                    adapted.load_state_dict(state)
                    fresh = adapted.merge_and_unload()  # a plain model: no peft to serve it
                else:
                    fresh.load_state_dict(state)
                with atomic_output_dir(out_dir / "model") as tmp:
                    save(fresh, processor, tmp)
                tracker.log_metrics(
                    {k: float(v) for k, v in asdict(result).items() if is_number(v)}
                )
        if rt.is_main:
            write_json(out_dir / "metrics.json", asdict(result))
        barrier()
    return result


def _with_lora(model: nn.Module, tcfg) -> nn.Module:
    """LoRA on the decoder's attention projections; the projector trains whole beside them."""
    from peft import LoraConfig, get_peft_model

    from lmforge.multimodal.model import parts
    from lmforge.train.lora import attention_projections

    where = parts(model)
    decoder = model.get_submodule(next(p for p in where.decoder if not p.endswith("lm_head")))
    names = "|".join(attention_projections(decoder))
    prefixes = "|".join(p.replace(".", r"\.") for p in where.decoder)
    lora = LoraConfig(
        r=tcfg.lora_r,
        lora_alpha=tcfg.lora_alpha,
        lora_dropout=tcfg.lora_dropout,
        target_modules=rf"^({prefixes})\..*\.({names})$",
        modules_to_save=[p.rsplit(".", 1)[-1] for p in where.projector],
    )
    return get_peft_model(model, lora)
