"""Fine-tuning through the shared training loop: outputs, LoRA, the baseline, bad input."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from mlflow_fixtures import tiny_config
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from lmforge.errors import DataError
from lmforge.train.finetune import finetune, macro_f1


def test_outputs_follow_the_contract(trained_stages):
    out = trained_stages["finetune"]
    metrics = json.loads((out / "metrics.json").read_text())
    cfg = tiny_config()
    assert metrics["steps"] == cfg.finetune.max_steps
    # The epochs budget (3 by default), capped by max_steps; too short to stop early.
    epochs_steps = math.ceil(cfg.finetune.max_epochs * metrics["train_examples"] / 8)
    assert metrics["budget_steps"] == min(epochs_steps, cfg.finetune.max_steps)
    assert metrics["stop_reason"] == f"budget reached: {metrics['steps']} steps"
    assert metrics["monitor"] == "val_macro_f1" and metrics["best_step"] in (10, 20, 30)
    for variant in ("model", "baseline"):
        model = AutoModelForSequenceClassification.from_pretrained(out / variant)
        assert model.config.id2label == {0: "ham", 1: "spam"}
        assert model.config.pad_token_id is not None  # last-token pooling needs it
        assert (out / variant / "tokenizer.json").is_file()
    # Same budget: both curves are logged at the same steps, up to max_steps.
    rows = list(csv.DictReader((out / "plots" / "loss.csv").open()))
    assert int(rows[-1]["step"]) == cfg.finetune.max_steps
    for row in rows:
        assert bool(row["train_loss"]) == bool(row["baseline_train_loss"])
    first, last = float(rows[0]["train_loss"]), float(rows[-1]["train_loss"])
    assert last < first
    # The classifier starts from the pretrained decoder; the baseline does not.
    pretrained = load_file(trained_stages["pretrain"] / "model" / "model.safetensors")
    key = "model.layers.0.mlp.up_proj.weight"
    tuned = load_file(out / "model" / "model.safetensors")[key]
    scratch = load_file(out / "baseline" / "model.safetensors")[key]
    assert (tuned - pretrained[key]).abs().mean() < (scratch - pretrained[key]).abs().mean()
    assert metrics["tracking"]["unsent"] == 0 and metrics["tracking"]["run_id"]


def test_training_sees_the_tokens_the_served_pipeline_sees(trained_stages):
    # Train/serve skew guard: the classifier head pools the last token of what it is given, so
    # training must tokenize like MLflow's text-classification pipeline does at serving time.
    from transformers import pipeline

    from lmforge.train.finetune import encode

    pipe = pipeline("text-classification", model=str(trained_stages["finetune"] / "model"))
    texts = ["Win a free prize now", "See you at the meeting tomorrow."]
    rows = [{"text": t, "label": "ham"} for t in texts]
    trained = encode(rows, pipe.tokenizer, ["ham", "spam"], max_length=10_000).ids
    served = [pipe.preprocess(t)["input_ids"][0].tolist() for t in texts]
    assert trained == served
    assert all(ids[-1] == pipe.tokenizer.eos_token_id for ids in served)  # the pooled token


@pytest.mark.slow
def test_lora_trains_adapters_and_merges_them(tiny_stages, embedded_store, tmp_path):
    cfg = tiny_config(
        "finetune.method=lora",
        "finetune.baseline=false",
        "finetune.max_steps=12",
        f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
    )
    result = finetune(cfg, tiny_stages["pretrain"], tiny_stages["augmented"], tmp_path / "ft")
    assert 0 < result.trainable_params < result.total_params / 4
    assert result.baseline_val_accuracy is None
    model_dir = tmp_path / "ft" / "model"
    assert not (model_dir / "adapter_config.json").exists()  # merged: loads without peft
    weights = load_file(model_dir / "model.safetensors")
    assert not any("lora" in k for k in weights)
    pretrained = load_file(tiny_stages["pretrain"] / "model" / "model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    up = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(weights[q], pretrained[q])  # the adapter was merged in
    assert torch.equal(weights[up], pretrained[up])  # untargeted weights stay frozen
    assert not (tmp_path / "ft" / "baseline").exists()


def test_unknown_label_names_the_file_and_line(tiny_stages, tmp_path):
    bad = tmp_path / "augmented" / "labelled"
    bad.mkdir(parents=True)
    for split in ("train", "validation", "test"):
        src = (tiny_stages["augmented"] / "labelled" / f"{split}.jsonl").read_text()
        (bad / f"{split}.jsonl").write_text(src)
    with (bad / "train.jsonl").open("a") as fh:
        fh.write(json.dumps({"id": "x", "text": "hello", "label": "eggs"}) + "\n")
    with pytest.raises(DataError, match=r"train\.jsonl:97: label 'eggs' is not one of"):
        finetune(tiny_config(), tiny_stages["pretrain"], tmp_path / "augmented", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_pretrained_model_is_a_clear_error(tiny_stages, tmp_path):
    with pytest.raises(DataError, match="no pretrained model"):
        finetune(tiny_config(), tmp_path / "nowhere", tiny_stages["augmented"], tmp_path / "out")


def test_macro_f1_matches_its_definition():
    # class 0: P=2/3 R=1 F1=0.8; class 1: P=1 R=1/2 F1=2/3
    confusion = [[2, 0], [1, 1]]
    assert macro_f1(__import__("numpy").array(confusion)) == pytest.approx((0.8 + 2 / 3) / 2)


@pytest.mark.slow
def test_ddp_fine_tuning_on_two_processes(tiny_stages, embedded_store, tmp_path):
    """The loop's parallelism serves fine-tuning too: two gloo ranks under torchrun."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    bin_dir = Path(sys.executable).parent
    torchrun = shutil.which("torchrun", path=str(bin_dir)) or "torchrun"
    lmforge = shutil.which("lmforge", path=str(bin_dir)) or "lmforge"
    sets = [
        "finetune.parallel=ddp",
        "finetune.max_steps=6",
        "finetune.micro_batch_size=4",
        "finetune.max_length=24",
        "finetune.eval_every=6",
        "finetune.eval_batches=2",
        "finetune.ckpt_every=0",
        "finetune.precision=fp32",
        "finetune.num_threads=1",
        "finetune.baseline=false",
        f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
    ]
    cmd = [
        torchrun,
        "--standalone",
        "--nproc-per-node=2",
        lmforge,
        "finetune",
        "--pretrained",
        str(tiny_stages["pretrain"]),
        "--data",
        str(tiny_stages["augmented"]),
        "--out",
        str(tmp_path / "ft"),
        *(a for s in sets for a in ("--set", s)),
    ]
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["steps"] == 6 and 0.0 <= metrics["val_accuracy"] <= 1.0
    AutoModelForSequenceClassification.from_pretrained(tmp_path / "ft" / "model")


def test_resume_survives_cadence_and_other_sections_but_not_training_changes(
    tiny_stages, embedded_store, tmp_path
):
    """Checkpoints live in the output (one folder per model); the fingerprint covers what
    changes the weights, not how often they are validated or how evaluate is configured."""
    base = ["finetune.max_steps=8", "finetune.ckpt_every=4", "finetune.eval_every=4"]
    art = f"tracking.artifact_location={tmp_path / 'mlartifacts'}"
    out = tmp_path / "ft"

    def run(*extra):
        cfg = tiny_config(*base, art, *extra)
        return finetune(cfg, tiny_stages["pretrain"], tiny_stages["augmented"], out)

    first = run()
    assert first.resumed_from is None
    for variant in ("model", "baseline"):
        assert (out / "checkpoints" / variant / "step-00000008" / "manifest.json").is_file()
    again = run("finetune.eval_every=8", "finetune.log_every=2", "evaluate.batch_size=4")
    assert again.resumed_from == 8 and again.val_macro_f1 == first.val_macro_f1
    changed = run("finetune.lr=0.001")
    assert changed.resumed_from is None
