"""Instruction tuning for the loop: prompt/response pairs -> token ids with response-only labels
-> length-bucketed batches -> loss and response perplexity.

- ``chat_template``: the template a run formats with (``finetune.chat_template``, else the
  tokenizer's own, else ``PLAIN_TEMPLATE``); it is saved in the model's tokenizer, so evaluate
  and whoever serves the model format prompts the same way;
- ``encode_pair``: the rendered prompt (with the generation cue) and the response are tokenized
  separately, so the prompt ids are exactly what generation is later given; labels are -100 on
  the prompt; too long a pair loses the start of its prompt (the cue and an instruction at the
  end stay) and keeps at most half of ``max_length`` for the response;
- ``BucketedBatches``: micro batches of similar lengths, padded to their longest (see its doc);
- ``SftTask``: the ``lmforge.train.loop.Task``; ``response_nll`` is evaluate's number too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lmforge.config import FinetuneConfig
from lmforge.data.sft_pairs import Pair
from lmforge.errors import DataError
from lmforge.metrics import perplexity_of
from lmforge.train.distributed import Runtime, all_reduce_sum

IGNORE = -100  # the label torch's cross-entropy skips
# Prompt, newline, response, EOS: for a tokenizer without a chat template of its own.
PLAIN_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}\n"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
WINDOW = 32  # micro batches' worth of examples sorted together by length


def chat_template(configured: str, tokenizer) -> str:
    return configured or getattr(tokenizer, "chat_template", None) or PLAIN_TEMPLATE


def render(tokenizer, template: str, prompt: str, response: str | None = None) -> str:
    messages = [{"role": "user", "content": prompt}]
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=response is None
    )


def prompt_text(tokenizer, template: str, prompt: str) -> str:
    """The prompt as the model sees it at generation time (template and generation cue)."""
    return render(tokenizer, template, prompt)


@dataclass
class EncodedPairs:
    ids: list[list[int]]
    labels: list[list[int]]
    truncated: int  # pairs cut to fit max_length

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.ids])


def encode_pair(tokenizer, template: str, pair: Pair, max_length: int) -> tuple[list, list, bool]:
    """(input ids, labels, truncated) of one pair; labels are -100 on the prompt."""
    head = prompt_text(tokenizer, template, pair.prompt)
    whole = render(tokenizer, template, pair.prompt, pair.response)
    if not whole.startswith(head):
        raise DataError(
            "finetune.chat_template: the rendered prompt with its generation cue is not the "
            "start of the rendered prompt + response; the template must render the user turn "
            "and the cue the same way in both (add_generation_prompt)"
        )
    prompt = tokenizer(head, add_special_tokens=False)["input_ids"]
    response = tokenizer(whole[len(head) :], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is not None and eos not in response:
        response.append(eos)  # the model must learn where a response ends
    truncated = len(prompt) + len(response) > max_length
    if truncated:
        response = response[: max(1, max_length // 2)]
        prompt = prompt[len(prompt) - (max_length - len(response)) :]
    return prompt + response, [IGNORE] * len(prompt) + response, truncated


def encode_pairs(tokenizer, template: str, pairs: list[Pair], max_length: int) -> EncodedPairs:
    ids, labels, truncated = [], [], 0
    for pair in pairs:
        x, y, cut = encode_pair(tokenizer, template, pair, max_length)
        ids.append(x)
        labels.append(y)
        truncated += cut
    return EncodedPairs(ids, labels, truncated)


def collate(data: EncodedPairs, idx, pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask and labels (-100 on padding) of examples ``idx``."""
    width = max(len(data.ids[i]) for i in idx)
    input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(data.ids[i])
        input_ids[row, :n] = torch.tensor(data.ids[i])
        labels[row, :n] = torch.tensor(data.labels[i])
        mask[row, :n] = 1
    out = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    return {k: v.to(device) for k, v in out.items()}


class BucketedBatches:
    """Micro batches of examples of similar length, a pure function of (seed, step).

    Why not packing: packed sequences attend across example boundaries unless the attention
    kernel takes per-example masks (varlen flash attention), which CPU SDPA does not; bucketing
    keeps every example alone in its row at little padding cost. Each epoch's seeded permutation
    is cut into windows of ``WINDOW`` micro batches; a window is sorted by length and cut into
    micro batches, and the order of all micro batches is shuffled again (seeded), so lengths do
    not drift over an epoch. Global micro batch ``g = (step * accum + micro) * world + rank``,
    as in ``GlobalBatchSampler``, so a resumed run needs only the step.
    """

    def __init__(self, lengths: np.ndarray, micro: int, accum: int, world: int, seed: int):
        if len(lengths) == 0:
            raise DataError("the training split has no pairs")
        self.lengths, self.micro, self.accum, self.world, self.seed = (
            lengths,
            micro,
            accum,
            world,
            seed,
        )
        self._epochs: dict[int, list[np.ndarray]] = {}

    def _epoch(self, epoch: int) -> list[np.ndarray]:
        if epoch not in self._epochs:
            if len(self._epochs) > 2:
                self._epochs.clear()
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            perm = torch.randperm(len(self.lengths), generator=gen).numpy()
            batches = []
            for start in range(0, len(perm), self.micro * WINDOW):
                window = perm[start : start + self.micro * WINDOW]
                window = window[np.argsort(self.lengths[window], kind="stable")]
                batches += [window[i : i + self.micro] for i in range(0, len(window), self.micro)]
            order = torch.randperm(len(batches), generator=gen).numpy()
            self._epochs[epoch] = [batches[i] for i in order]
        return self._epochs[epoch]

    def per_epoch(self) -> int:
        """Micro batches in every epoch: whole windows, then the last window's."""
        full, rest = divmod(len(self.lengths), self.micro * WINDOW)
        return full * WINDOW + -(-rest // self.micro)

    def indices(self, step: int, micro: int, rank: int) -> np.ndarray:
        g = (step * self.accum + micro) * self.world + rank
        n = self.per_epoch()
        return self._epoch(g // n)[g % n]


def response_nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
    """(summed loss over the batch's response tokens, their number)."""
    n = int((batch["labels"][:, 1:] != IGNORE).sum())
    return float(model(**batch).loss) * n, n


class SftTask:
    """Causal-LM loss on the response tokens of the pairs (a ``lmforge.train.loop.Task``)."""

    def __init__(
        self, train: EncodedPairs, val: EncodedPairs, cfg: FinetuneConfig, rt: Runtime, pad_id: int
    ):
        self.train, self.val, self.rt, self.pad_id = train, val, rt, pad_id
        self.micro = cfg.micro_batch_size
        self.batches = BucketedBatches(
            train.lengths, cfg.micro_batch_size, cfg.grad_accum_steps, rt.world_size, cfg.seed
        )
        n_val = min(len(val.ids), max(1, cfg.eval_batches) * cfg.micro_batch_size * rt.world_size)
        n_val -= n_val % rt.world_size  # equal forward passes per rank (FSDP gathers in each)
        order = np.argsort(val.lengths[:n_val], kind="stable")  # little padding in validation
        self.val_ids = order[rt.rank :: rt.world_size]
        self.real_tokens = self.padded_tokens = 0  # padding efficiency, reported

    def batch(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        batch = collate(
            self.train, self.batches.indices(step, micro, self.rt.rank), self.pad_id, self.rt.device
        )
        self.real_tokens += int(batch["attention_mask"].sum())
        self.padded_tokens += batch["attention_mask"].numel()
        return batch

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        total, count = 0.0, 0
        for start in range(0, len(self.val_ids), self.micro):
            idx = self.val_ids[start : start + self.micro]
            nll, n = response_nll(model, collate(self.val, idx, self.pad_id, self.rt.device))
            total, count = total + nll, count + n
        total, count = all_reduce_sum([total, float(count)], self.rt.device)
        loss = total / max(count, 1.0)
        return {"val_loss": loss, "val_perplexity": perplexity_of(loss)}
