"""The tokenize stage: the tokenizer loads with transformers; the blocks follow the contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_fixtures import MICRO

from lmforge.config import load_config
from lmforge.data.split import SPLITS
from lmforge.data.tokenize import tokenize
from lmforge.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("data_store")  # MLflow runs go to a throwaway store


def texts(path):
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def blocks(tok_dir, split):
    meta = json.loads((tok_dir / "blocks" / "meta.json").read_text())
    arr = np.memmap(tok_dir / "blocks" / f"{split}.bin", dtype=meta["dtype"], mode="r")
    return meta, arr.reshape(-1, meta["block_size"])


def test_tokenizer_loads_with_transformers(tokenized):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(tokenized / "tokenizer")
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.eos_token_id != tok.pad_token_id
    text = "The king said: café, 3 boats!"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: everything round-trips


def test_blocks_follow_the_contract_and_hold_every_record(micro_cfg, augmented, tokenized):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(tokenized / "tokenizer")
    for split in SPLITS:
        meta, arr = blocks(tokenized, split)
        info = meta["splits"][split]
        assert meta["block_size"] == micro_cfg.tokenizer.block_size == arr.shape[1]
        assert meta["dtype"] == "uint16" and meta["vocab_size"] == len(tok)
        assert (meta["eos_id"], meta["pad_id"]) == (tok.eos_token_id, tok.pad_token_id)
        assert arr.shape[0] == info["n_blocks"] > 0
        assert info["n_blocks"] * meta["block_size"] == info["n_tokens"] - info["dropped_tokens"]
        assert 0 <= info["dropped_tokens"] < meta["block_size"]
        # The split's LM text: the corpus, then the labelled records' texts (no labels).
        source = texts(augmented / "corpus" / f"{split}.jsonl")
        source += texts(augmented / "labelled" / f"{split}.jsonl")
        assert info["n_records"] == len(source)
        # Records packed in order, each closed by EOS: decoding the stream gives them back.
        stream = arr.reshape(-1).tolist()
        pieces = tok.decode(stream).split(tok.eos_token)
        complete = pieces[:-1]  # the last one may be cut by the dropped tail
        assert complete == source[: len(complete)]
        assert len(complete) == stream.count(meta["eos_id"])
    metrics = json.loads((tokenized / "metrics.json").read_text())
    assert metrics["train"]["n_tokens"] == meta["splits"]["train"]["n_tokens"]


def _append_to_texts(path, word: str) -> None:
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    for r in recs:
        r["text"] += f" {word}" * 30  # frequent enough to be merged, were it seen in training
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_tokenizer_is_trained_on_the_training_split_only(micro_cfg, augmented, tmp_path):
    from transformers import PreTrainedTokenizerFast

    _append_to_texts(augmented / "corpus" / "test.jsonl", "zqxvbnk")
    _append_to_texts(augmented / "labelled" / "validation.jsonl", "qwxjvpd")
    _append_to_texts(augmented / "labelled" / "train.jsonl", "mailwordx")
    tokenize(micro_cfg, augmented, tmp_path / "tok")
    tok = PreTrainedTokenizerFast.from_pretrained(tmp_path / "tok" / "tokenizer")
    assert len(tok(" zqxvbnk")["input_ids"]) > 3
    assert len(tok(" qwxjvpd")["input_ids"]) > 3  # held-out emails: never trained on
    assert len(tok(" the")["input_ids"]) == 1  # a frequent training word is one token
    assert len(tok(" mailwordx")["input_ids"]) == 1  # so is one of the training emails'


def test_labelled_text_can_be_left_out(augmented, tmp_path):
    cfg = load_config(None, [*MICRO, "tokenizer.include_labelled_text=false"])
    tokenize(cfg, augmented, tmp_path / "tok")
    meta, _ = blocks(tmp_path / "tok", "train")
    assert meta["splits"]["train"]["n_records"] == len(texts(augmented / "corpus" / "train.jsonl"))


def test_missing_labelled_split_names_the_file_and_the_switch(micro_cfg, augmented, tmp_path):
    (augmented / "labelled" / "test.jsonl").unlink()
    with pytest.raises(DataError, match=r"labelled/test\.jsonl: missing.*include_labelled_text"):
        tokenize(micro_cfg, augmented, tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def test_no_training_block_is_an_error(augmented, tmp_path):
    cfg = load_config(None, [*MICRO, "tokenizer.block_size=1000000"])
    with pytest.raises(DataError, match=r"make no block of tokenizer\.block_size=1000000"):
        tokenize(cfg, augmented, tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def test_special_tokens_must_include_eos_and_pad():
    # A rule of the tokenizer section: checked when params.yaml is loaded, before any stage.
    with pytest.raises(ConfigError, match=r"tokenizer\.pad_token: '<pad>' must be listed in"):
        load_config(None, [*MICRO, "tokenizer.pad_token=<pad>"])


def test_tokenizer_training_sample_is_a_deterministic_share(augmented):
    from lmforge.data.tokenize import training_texts

    paths = [augmented / "corpus" / "train.jsonl", augmented / "labelled" / "train.jsonl"]
    sources = [(paths[0], "corpus"), (paths[1], "labelled")]
    everything = list(training_texts(sources, 0))
    assert everything == texts(paths[0]) + texts(paths[1])
    cap_mb = sum(p.stat().st_size for p in paths) / 3 / 1e6
    sample = list(training_texts(sources, cap_mb))
    assert sample == list(training_texts(sources, cap_mb))  # the same records every time
    assert 0.1 < len(sample) / len(everything) < 0.6 and set(sample) < set(everything)


def test_personal_data_placeholders_are_single_tokens(micro_cfg, augmented, tmp_path):
    from transformers import PreTrainedTokenizerFast

    from lmforge.data.pii import PLACEHOLDERS

    _append_to_texts(augmented / "labelled" / "train.jsonl", "<|email|>,")
    tokenize(micro_cfg, augmented, tmp_path / "tok")
    tok = PreTrainedTokenizerFast.from_pretrained(tmp_path / "tok" / "tokenizer")
    for placeholder in PLACEHOLDERS.values():
        (pid,) = tok(placeholder)["input_ids"]  # one token, however rare in training
        assert tok.convert_ids_to_tokens(pid) == placeholder and pid != tok.unk_token_id
    email = tok.convert_tokens_to_ids("<|email|>")
    ids = tok("Write to <|email|>, or <|phone|>.")["input_ids"]
    assert ids.count(email) == 1 and tok.decode(ids) == "Write to <|email|>, or <|phone|>."
    _, arr = blocks(tmp_path / "tok", "train")
    assert int((arr == email).sum()) > 0  # the masked training text holds it as that token
