"""The pretrain component in the full local pipeline run: the job's spec on local processes."""

import json

from lmforge_components.testing import logged_metrics, micro_config


def test_pretrain_on_the_local_backend_hands_on_a_model(full_pipeline_run):
    cfg = micro_config()
    task = full_pipeline_run.task("pretrain")  # a local run's backend is "local"
    pretrained = task / "pretrained"
    config = json.loads((pretrained / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == cfg.model.n_layers
    assert (pretrained / "model" / "tokenizer.json").exists()
    metrics = json.loads((pretrained / "metrics.json").read_text())
    assert metrics["steps"] == cfg.pretrain.max_steps if "steps" in metrics else metrics
    assert logged_metrics(task)
