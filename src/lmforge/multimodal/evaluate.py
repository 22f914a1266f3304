"""Held-out evaluation of the image-text model against the same model without the image.

``evaluate_multimodal(cfg, model_dir, test_dir, out_dir)`` scores the model folder (an align or
instruct output's ``model/``) on the test split, twice: with the image (the model) and with the
image token left out of the prompt (``text-only``: the same decoder, no image prefix), plus
chance:

- caption perplexity (loss per caption token, EOS included);
- ROUGE-L and CIDEr-D of greedy captions against the references (``caption_metrics``);
  chance: each reference scored against another test image's reference;
- image-to-text retrieval recall@1/5: for each test image, the captions of a pool of test images
  ranked by the model's log-likelihood of the caption given the image; chance: k / pool.

``out_dir``: ``report.json`` (everything; ``gate`` says whether recall@1 beats the text-only
baseline by more than ``multimodal.eval.min_recall_gain``), ``report.html`` (thumbnails beside
generated and reference captions), ``captions.jsonl`` (every generated caption).
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.config import Config
from lmforge.outputs import atomic_output_dir, write_json


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class Scorer:
    """A loaded model with its processor, and the caption prompt it is scored on."""

    model: Any
    processor: Any
    prompt: str
    max_length: int

    @property
    def model_type(self) -> str:
        return self.model.config.model_type

    @torch.no_grad()
    def caption_nll(self, images, captions, with_image: bool = True) -> list[float]:
        """Summed negative log-likelihood of each caption (and EOS) after the caption prompt,
        with or without the image; one value per (image, caption)."""
        from lmforge.multimodal.batches import Example, collate, encode

        examples = [Example(i, self.prompt, c) for i, c in zip(images, captions, strict=True)]
        data = encode(self.processor, self.model_type, examples, self.max_length)
        if not with_image:
            data = _without_image(data, self.processor)
        pad = self.processor.tokenizer.pad_token_id
        out: list[float] = []
        for idx in _batches(list(range(len(examples))), 16):
            batch = collate(data, idx, pad, torch.device("cpu"))
            labels = batch.pop("labels")
            logits = self.model(**batch, use_cache=False).logits[:, :-1].float()
            target = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), target.clamp(min=0), reduction="none"
            )
            out += (nll * (target != -100)).sum(1).tolist()
        return out

    @torch.no_grad()
    def generate(self, images, max_new: int, with_image: bool = True) -> list[str]:
        """Greedy captions of the caption prompt, one per image (text-only: one for all)."""
        from lmforge.data.images.pairs import load_image
        from lmforge.multimodal.batches import process, prompt_text

        tok = self.processor.tokenizer
        out = []
        for path in images if with_image else images[:1]:
            if with_image:
                inputs = process(self.processor, self.model_type, load_image(path), self.prompt)
            else:
                text = prompt_text(self.processor, self.model_type, self.prompt, with_image=False)
                inputs = dict(tok(text, return_tensors="pt"))
            ids = self.model.generate(
                **inputs, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id
            )
            new = ids[0, inputs["input_ids"].shape[1] :]
            out.append(tok.decode(new, skip_special_tokens=True).strip())
        return out if with_image else out * len(images)

    def retrieval_ranks(self, images, captions, with_image: bool = True) -> list[int]:
        """Rank (0 = first) of each image's own caption among ``captions``, by likelihood."""
        ranks = []
        for i, path in enumerate(images):
            nll = self.caption_nll([path] * len(captions), captions, with_image)
            if not with_image:  # the same scores whatever the image: computed once
                return [sum(v < n for v in nll) for n in nll]
            ranks.append(sum(v < nll[i] for v in nll))  # ties count in the caption's favour
        return ranks


def _without_image(data, processor):
    """The same examples with the prompt's image tokens removed and no pixels: the decoder
    reads the text alone."""
    from lmforge.multimodal.batches import EncodedImageText
    from lmforge.multimodal.model import image_token

    image_id = processor.tokenizer.convert_tokens_to_ids(image_token(processor))
    out = EncodedImageText([], [], [], data.truncated, data.images)
    for ids, labels, extras in zip(data.ids, data.labels, data.extras, strict=True):
        keep = [k for k, t in enumerate(ids) if t != image_id]
        out.ids.append([ids[k] for k in keep])
        out.labels.append([labels[k] for k in keep])
        types = extras.get("token_type_ids")
        out.extras.append({} if types is None else {"token_type_ids": types[keep]})
    return out


def evaluate_multimodal(cfg: Config, model_dir: Path, test_dir: Path, out_dir: Path) -> dict:
    from lmforge.data.images.pairs import read_pairs
    from lmforge.multimodal.caption_metrics import cider_d, rouge_l
    from lmforge.multimodal.model import load_vlm

    mcfg, ecfg = cfg.multimodal, cfg.multimodal.eval
    model, processor = load_vlm(Path(model_dir), "the model to evaluate")
    scorer = Scorer(model.eval(), processor, mcfg.caption_prompt, mcfg.max_length)
    pairs = read_pairs(Path(test_dir))
    pairs = pairs[: ecfg.max_pairs] if ecfg.max_pairs else pairs
    images = [p.image_path for p in pairs]
    refs = [p.caption for p in pairs]
    pool = len(pairs) if not ecfg.retrieval_pool else min(ecfg.retrieval_pool, len(pairs))
    report: dict[str, Any] = {"model_dir": str(model_dir), "test_pairs": len(pairs), "pool": pool}
    generated = {}
    n_tokens = sum(
        len(processor.tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for r in refs
    )
    for name, with_image in (("model", True), ("text_only", False)):
        nll = scorer.caption_nll(images, refs, with_image)
        caps = scorer.generate(images, ecfg.max_new_tokens, with_image)
        generated[name] = caps
        ranks = scorer.retrieval_ranks(images[:pool], refs[:pool], with_image)
        report[name] = _scores(sum(nll) / max(n_tokens, 1), caps, refs, ranks)
    shifted = refs[1:] + refs[:1]  # another image's caption as the answer: chance
    report["chance"] = {
        "rouge_l": sum(rouge_l(s, [r]) for s, r in zip(shifted, refs, strict=True)) / len(refs),
        "cider": sum(cider_d(shifted, [[r] for r in refs])) / len(refs),
        "recall_at_1": min(1.0, 1 / pool),
        "recall_at_5": min(1.0, 5 / pool),
    }
    gain = report["model"]["recall_at_1"] - report["text_only"]["recall_at_1"]
    report["gate"] = {
        "metric": "recall_at_1 - text_only recall_at_1",
        "value": gain,
        "min_gain": ecfg.min_recall_gain,
        "passed": gain > ecfg.min_recall_gain,
    }
    rows = [
        {"image": str(p.image_path), "reference": p.caption, "generated": g, "text_only": t}
        for p, g, t in zip(pairs, generated["model"], generated["text_only"], strict=True)
    ]
    with atomic_output_dir(Path(out_dir)) as tmp:
        write_json(tmp / "report.json", report)
        (tmp / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp / "report.html").write_text(_html(report, rows[: ecfg.thumbnails]))
    return report


def _scores(loss: float, caps: list[str], refs: list[str], ranks: list[int]) -> dict[str, float]:
    from lmforge.metrics import perplexity_of
    from lmforge.multimodal.caption_metrics import cider_d, recall_at, rouge_l

    return {
        "caption_loss": loss,
        "caption_perplexity": perplexity_of(loss) if math.isfinite(loss) else math.inf,
        "rouge_l": sum(rouge_l(c, [r]) for c, r in zip(caps, refs, strict=True)) / len(refs),
        "cider": sum(cider_d(caps, [[r] for r in refs])) / len(refs),
        "recall_at_1": recall_at(ranks, 1),
        "recall_at_5": recall_at(ranks, 5),
    }


def _thumb(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def _html(report: dict, rows: list[dict]) -> str:
    """One page: the numbers of model, text-only and chance, then thumbnails and captions."""
    keys = ["caption_perplexity", "rouge_l", "cider", "recall_at_1", "recall_at_5"]
    head = "".join(f"<th>{k}</th>" for k in keys)
    lines = []
    for name in ("model", "text_only", "chance"):
        cells = "".join(
            f"<td>{report[name][k]:.3f}</td>" if k in report[name] else "<td>-</td>" for k in keys
        )
        lines.append(f"<tr><td>{name}</td>{cells}</tr>")
    gate = report["gate"]
    verdict = "passed" if gate["passed"] else "failed"
    cards = "".join(
        f'<tr><td><img width="64" src="data:image/png;base64,{_thumb(r["image"])}"></td>'
        f"<td>{html.escape(r['reference'])}</td><td>{html.escape(r['generated'])}</td>"
        f"<td>{html.escape(r['text_only'])}</td></tr>"
        for r in rows
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>lmforge image-text "
        "evaluation</title></head><body><h1>Image-text evaluation</h1>"
        f"<p>{report['test_pairs']} test pairs; retrieval among {report['pool']} captions. "
        f"Gate ({html.escape(gate['metric'])} &gt; {gate['min_gain']}): {verdict} "
        f"({gate['value']:.3f}).</p>"
        f"<table border='1'><tr><th></th>{head}</tr>{''.join(lines)}</table>"
        "<h2>Captions</h2><table border='1'><tr><th>image</th><th>reference</th>"
        f"<th>generated</th><th>text-only</th></tr>{cards}</table></body></html>"
    )
