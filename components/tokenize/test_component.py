"""The tokenize component in the session's full local pipeline run on the micro data."""

import json

from lmforge_components.testing import logged_metrics, micro_config


def test_tokenize_writes_tokenizer_and_packed_blocks(full_pipeline_run):
    cfg = micro_config()
    task = full_pipeline_run.task("tokenize")
    tokenized = task / "tokenized"
    meta = json.loads((tokenized / "blocks" / "meta.json").read_text())
    assert meta["block_size"] == cfg.tokenizer.block_size
    assert (tokenized / "blocks" / "train.bin").stat().st_size > 0
    assert (tokenized / "tokenizer" / "tokenizer.json").exists()
    assert logged_metrics(task)
