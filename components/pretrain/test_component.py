"""The pretrain component through KFP's local runner: the training job's spec on local processes."""

import json

from kfp.dsl import Dataset

from lmforge_components.pretrain import build
from lmforge_components.testing import logged_metrics, micro_config, run_one


def test_pretrain_on_the_local_backend_hands_on_a_model(upstream, kfp_workdir):
    cfg = micro_config(store=kfp_workdir)
    task = run_one(
        build(), cfg, kfp_workdir, {"tokenized": (upstream["tokenized"], Dataset)}, backend="local"
    )
    pretrained = task / "pretrained"
    config = json.loads((pretrained / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == cfg.model.n_layers
    assert (pretrained / "model" / "tokenizer.json").exists()
    metrics = json.loads((pretrained / "metrics.json").read_text())
    assert metrics["steps"] == cfg.pretrain.max_steps if "steps" in metrics else metrics
    assert logged_metrics(task)
