"""The tokenize component through KFP's local runner on an augmented micro split."""

import json

from kfp.dsl import Dataset

from lmforge_components.testing import logged_metrics, micro_config, run_one
from lmforge_components.tokenize import build


def test_tokenize_writes_tokenizer_and_packed_blocks(upstream, kfp_workdir):
    cfg = micro_config(store=kfp_workdir)
    task = run_one(build(), cfg, kfp_workdir, {"augmented": (upstream["augmented"], Dataset)})
    tokenized = task / "tokenized"
    meta = json.loads((tokenized / "blocks" / "meta.json").read_text())
    assert meta["block_size"] == cfg.tokenizer.block_size
    assert (tokenized / "blocks" / "train.bin").stat().st_size > 0
    assert (tokenized / "tokenizer" / "tokenizer.json").exists()
    assert logged_metrics(task)
