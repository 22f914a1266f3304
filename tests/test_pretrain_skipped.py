"""``finetune.base_model`` set and ``pretrain.init_from`` not: the pretrain stage trains nothing
and says so, evaluate scores no LM and register registers none (``lmforge.train.skipped``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow_fixtures import tiny_config

from lmforge.config import load_config
from lmforge.train.skipped import MARKER, lm_skipped, skip_pretrain, skip_reason

LMFORGE = shutil.which("lmforge") or str(Path(sys.executable).parent / "lmforge")
REASON = "finetune.base_model is set"


def stale_lm(out: Path) -> None:
    """An earlier run's pretrained model in ``out``: the skipped output must replace it."""
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text("{}")
    (out / "model" / "model.safetensors").write_bytes(b"weights")


@pytest.mark.parametrize("backend", ["inline", "local", "kubernetes"])
def test_pretrain_writes_that_it_skipped_and_no_weights(backend, tmp_path):
    out = tmp_path / "pretrain"
    stale_lm(out)
    args = ["--backend", backend, "--data", str(tmp_path / "no-blocks"), "--out", str(out)]
    proc = subprocess.run(
        [LMFORGE, "pretrain", *args, "--set", f"finetune.base_model={tmp_path / 'base'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr  # nothing launched: no blocks, no cluster needed
    assert proc.stderr.strip().startswith(f"pretrain skipped: {REASON}")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in (out / "model").iterdir()) == [MARKER]
    marker = json.loads((out / "model" / MARKER).read_text())
    assert marker["skipped"] is True and marker["base_model"] == str(tmp_path / "base")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == marker  # no numbers: nothing was measured
    assert (out / "plots" / "loss.csv").read_text() == "step,train_loss,val_loss\n"


def test_only_base_model_without_init_from_skips(tmp_path):
    assert skip_reason(load_config(None, [])) is None
    both = load_config(None, ["finetune.base_model=/m", "pretrain.init_from=/m"])
    assert skip_reason(both) is None  # continued pretraining is asked for: it runs
    assert skip_reason(load_config(None, ["finetune.base_model=/m"])).startswith(REASON)


def test_the_kubeflow_step_skips_before_staging_anything(tmp_path):
    from lmforge.kfp.runtime import pretrain_on_backend

    cfg = load_config(None, [f"finetune.base_model={tmp_path / 'base'}"])
    result = pretrain_on_backend(cfg, tmp_path / "tokenized", tmp_path / "out", "kubernetes", "r")
    assert result.skipped and (tmp_path / "out" / "model" / MARKER).is_file()


def test_no_lm_of_this_run_whatever_the_pretrain_folder_holds(tiny_stages, tmp_path):
    from lmforge.evaluate import score_lm

    with_base = tiny_config(f"finetune.base_model={tmp_path / 'base'}")
    # an LM from an earlier run is not this run's: not scored
    assert score_lm(with_base, tiny_stages["pretrain"], tiny_stages["tokenized"]) == (
        {"skipped": True, "reason": skip_reason(with_base)},
        [],
    )
    skip_pretrain(with_base, tmp_path / "pretrain")
    plain = tiny_config()  # evaluate run without the override: the marker still says why
    assert lm_skipped(plain, tmp_path / "pretrain").startswith(REASON)
    assert lm_skipped(plain, tiny_stages["pretrain"]) is None


@pytest.mark.slow
def test_evaluate_and_register_leave_the_lm_out(embedded_store, trained_stages, tmp_path):
    """The classifier is scored, gated and registered; the LM is neither loaded (its folder
    holds the marker only), scored, sampled nor registered."""
    import mlflow

    from lmforge.evaluate import evaluate
    from lmforge.registry import register

    cfg = tiny_config(
        f"finetune.base_model={tmp_path / 'base'}",
        "evaluate.compare_champion=false",
        "register.min_primary=0.0",
        f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
    )
    pretrain, ev, rg = tmp_path / "pretrain", tmp_path / "evaluate", tmp_path / "register"
    skip_pretrain(cfg, pretrain)
    stages = trained_stages
    result = evaluate(
        cfg, pretrain, stages["finetune"], stages["tokenized"], stages["augmented"], ev
    )
    assert result.perplexity is None and result.passed
    report = json.loads((ev / "report.json").read_text())
    assert report["lm"] == {"skipped": True, "reason": skip_reason(cfg)}
    assert report["samples"] == [] and json.loads((ev / "samples.json").read_text()) == []
    assert report["classifier"]["accuracy"] > report["majority"]["accuracy"]
    metrics = json.loads((ev / "metrics.json").read_text())
    assert "perplexity" not in metrics and metrics["gate_passed"] == 1
    assert f"Not pretrained in this run: {REASON}" in (ev / "report.md").read_text()

    registered = register(cfg, pretrain, stages["finetune"], ev, rg)
    assert registered.lm is None and registered.lm_skipped == skip_reason(cfg)
    saved = json.loads((rg / "registered.json").read_text())
    assert saved["lm"] is None and saved["lm_skipped"].startswith(REASON)
    assert saved["classifier"]["name"] == cfg.register.classifier_model_name
    names = {m.name for m in mlflow.MlflowClient().search_registered_models()}
    assert names == {cfg.register.classifier_model_name}  # no lmforge-lm version
