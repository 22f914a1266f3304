"""The finetune and evaluate components with ``finetune.task: sft`` (the sft pipeline's default),
through KFP's local runner, on the subject lines of the micro emails."""

import json

from kfp.dsl import Dataset, Model

from lmforge_components import evaluate, finetune
from lmforge_components.testing import logged_metrics, micro_config, returned, run_one

SFT = ("finetune.task=sft", "evaluate.sft_max_new_tokens=4", "evaluate.sft_max_pairs=8")


def test_sft_finetune_then_evaluate_components(upstream, kfp_workdir):
    cfg = micro_config(*SFT, "finetune.baseline=false", store=kfp_workdir)
    inputs = {
        "pretrained": (upstream["pretrain"], Model),
        "augmented": (upstream["augmented"], Dataset),
    }
    task = run_one(finetune.build(), cfg, kfp_workdir / "ft", inputs)
    tuned = task / "finetuned"
    config = json.loads((tuned / "model" / "config.json").read_text())
    assert config["architectures"][0].endswith("ForCausalLM")  # a causal LM, not a classifier
    assert (tuned / "pairs" / "test.jsonl").read_text()
    assert "val_perplexity" in logged_metrics(task)

    inputs = {
        "pretrained": (upstream["pretrain"], Model),
        "finetuned": (tuned, Model),
        "tokenized": (upstream["tokenized"], Dataset),
        "augmented": (upstream["augmented"], Dataset),
    }
    task = run_one(evaluate.build(), cfg, kfp_workdir / "ev", inputs)
    report = json.loads((task / "evaluation" / "report.json").read_text())
    assert report["task"] == "sft" and report["base"] is None  # finetune.baseline false
    assert returned(task) is report["gate"]["passed"]
    assert "rouge_l" in logged_metrics(task)
