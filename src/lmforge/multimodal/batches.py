"""Image + prompt -> answer examples for the training loop, with the model's own processor.

``encode(processor, model_type, examples, max_length)`` runs the processor on each (image,
prompt) as generation later sees it (the image token expanded to the image's tokens, the pixels
normalised), then appends the answer's token ids and EOS: labels are -100 on the prompt and the
image, so the loss is the answer's alone (as ``lmforge.train.sft`` does for text). Examples are
encoded once and kept in memory (the image sets this path is built for are small).
``ImageTextTask`` is ``SftTask`` with these batches: the same length-bucketed order (a pure
function of the step, so resuming needs only the step) and the same response perplexity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmforge.train.distributed import all_reduce_sum
from lmforge.train.sft import IGNORE, SftTask, response_nll

# Processor outputs shaped like input_ids (one value a token): padded and extended per token.
PER_TOKEN = ("attention_mask", "token_type_ids")


@dataclass(frozen=True)
class Example:
    image: Path
    prompt: str
    answer: str


@dataclass
class EncodedImageText:
    ids: list[list[int]]
    labels: list[list[int]]
    extras: list[dict[str, torch.Tensor]]  # per example: pixels, per-token types
    truncated: int = 0
    images: list[Path] = field(default_factory=list)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.ids])


def prompt_text(processor, model_type: str, prompt: str, with_image: bool = True) -> str:
    """The text a processor is given: the image token, then the instruction (and a newline
    where the architecture's processor does not add one)."""
    from lmforge.multimodal.model import ENDS_PROMPT, image_token

    head = image_token(processor) if with_image else ""
    return head + prompt + ("" if model_type in ENDS_PROMPT else "\n")


def process(processor, model_type: str, image, prompt: str) -> dict[str, torch.Tensor]:
    """The processor's tensors of one (image, prompt), batch of one, without its own labels."""
    out = processor(
        images=[image], text=[prompt_text(processor, model_type, prompt)], return_tensors="pt"
    )
    return {k: v for k, v in out.items() if k != "labels"}


def encode(processor, model_type: str, examples: list[Example], max_length: int):
    from lmforge.data.images.pairs import load_image
    from lmforge.multimodal.model import ANSWER_TOKEN_TYPE

    tok = processor.tokenizer
    data = EncodedImageText([], [], [])
    answer_type = ANSWER_TOKEN_TYPE.get(model_type, 0)
    seen: dict[tuple[Path, str], dict[str, torch.Tensor]] = {}  # retrieval: one image, many
    for ex in examples:
        if (ex.image, ex.prompt) not in seen:
            seen[ex.image, ex.prompt] = process(
                processor, model_type, load_image(ex.image), ex.prompt
            )
        out = dict(seen[ex.image, ex.prompt])
        prompt = out.pop("input_ids")[0].tolist()
        answer = tok(ex.answer, add_special_tokens=False)["input_ids"][: max_length - 1]
        data.truncated += len(answer) == max_length - 1
        answer.append(tok.eos_token_id)  # the model must learn where an answer ends
        extras = {k: v for k, v in out.items() if k not in PER_TOKEN}
        if "token_type_ids" in out:
            types = out["token_type_ids"][0].tolist() + [answer_type] * len(answer)
            extras["token_type_ids"] = torch.tensor(types)
        data.ids.append(prompt + answer)
        data.labels.append([IGNORE] * len(prompt) + answer)
        data.extras.append(extras)
        data.images.append(ex.image)
    return data


def collate(data: EncodedImageText, idx, pad_id: int, device: torch.device) -> dict:
    """Right-padded ids, mask, labels (and token types); the pixel tensors concatenated."""
    width = max(len(data.ids[i]) for i in idx)
    input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    out: dict[str, torch.Tensor] = {}
    if "token_type_ids" in data.extras[idx[0]]:
        out["token_type_ids"] = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(data.ids[i])
        input_ids[row, :n] = torch.tensor(data.ids[i])
        labels[row, :n] = torch.tensor(data.labels[i])
        mask[row, :n] = 1
        if "token_type_ids" in out:
            out["token_type_ids"][row, :n] = data.extras[i]["token_type_ids"]
    for key in data.extras[idx[0]]:
        if key != "token_type_ids":  # pixels: a batch of images (or of patches) along dim 0
            out[key] = torch.cat([data.extras[i][key] for i in idx])
    out.update(input_ids=input_ids, attention_mask=mask, labels=labels)
    return {k: v.to(device) for k, v in out.items()}


class ImageTextTask(SftTask):
    """Answer-token loss of image + prompt examples (a ``lmforge.train.loop.Task``)."""

    def batch(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        idx = self.batches.indices(step, micro, self.rt.rank)
        batch = collate(self.train, idx, self.pad_id, self.rt.device)
        self.real_tokens += int(batch["attention_mask"].sum())
        self.padded_tokens += batch["attention_mask"].numel()
        return batch

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch, use_cache=False).loss

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        from lmforge.metrics import perplexity_of

        total, count = 0.0, 0
        for start in range(0, len(self.val_ids), self.micro):
            idx = self.val_ids[start : start + self.micro]
            nll, n = response_nll(model, collate(self.val, idx, self.pad_id, self.rt.device))
            total, count = total + nll, count + n
        total, count = all_reduce_sum([total, float(count)], self.rt.device)
        loss = total / max(count, 1.0)
        return {"val_loss": loss, "val_perplexity": perplexity_of(loss)}
