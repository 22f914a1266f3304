"""A model trained on masked data cannot reproduce an address of its training set.

The session's ``upstream`` run (validate -> augment -> tokenize -> pretrain -> ... on the micro
slice of the real data, whose emails carry real addresses) is the training run: every address
in the raw records that validate put in the training split is searched for in what pretraining
read, and in samples of the pretrained model prompted towards addresses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmforge.data import pii
from lmforge_components.testing import micro_config

pytestmark = pytest.mark.slow

PROMPTS = [
    "From: ",
    "Reply to ",
    "Contact us at ",
    "send an email to ",
    "mailto:",
    "Call us at ",
    "Email: ",
    "Subject: Re: ",
]


def training_addresses(micro_data, validated) -> set[str]:
    train_ids = {
        json.loads(line)["id"]
        for kind in ("corpus", "labelled")
        for line in (validated / kind / "train.jsonl").read_text().splitlines()
    }
    found = set()
    for path in [*micro_data.glob("corpus/*.jsonl"), *micro_data.glob("labelled/*.jsonl")]:
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec["id"] in train_ids:
                found.update(m.text for m in pii.find(rec["text"]))
    return found


def test_samples_of_a_model_trained_on_masked_data_hold_no_training_address(micro_data, upstream):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from lmforge.evaluate import samples

    addresses = training_addresses(micro_data, upstream["validated"])
    assert sum("@" in a for a in addresses) >= 20  # 31 distinct in the micro slice

    # What pretraining read: the training blocks, decoded, hold placeholders and no address.
    tok = PreTrainedTokenizerFast.from_pretrained(upstream["tokenized"] / "tokenizer")
    meta = json.loads((upstream["tokenized"] / "blocks" / "meta.json").read_text())
    ids = np.memmap(upstream["tokenized"] / "blocks" / "train.bin", dtype=meta["dtype"], mode="r")
    email_id = tok.convert_tokens_to_ids("<|email|>")
    assert tok("<|email|>")["input_ids"] == [email_id]  # one token of the trained tokenizer
    assert int((ids == email_id).sum()) > 0
    trained_on = tok.decode(ids.tolist())
    assert not [a for a in addresses if a in trained_on]

    # What the model says: evaluate's samples and more, prompted towards addresses.
    model_dir = upstream["pretrain"] / "model"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    cfg = micro_config(
        f"evaluate.sample_prompts={json.dumps(PROMPTS)}",
        "evaluate.sample_max_new_tokens=48",
        "evaluate.sample_temperature=1.0",
    )
    texts = [s["completion"] for s in samples(model, tok, cfg)]
    texts += [
        s["completion"] for s in json.loads((upstream["evaluate"] / "samples.json").read_text())
    ]
    assert len(texts) >= len(PROMPTS) and all(texts)
    leaked = [(a, t) for t in texts for a in addresses if a in t]
    assert not leaked
