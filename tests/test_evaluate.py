"""Evaluation: the report, metrics and plots; the gate; the champion comparison."""

from __future__ import annotations

import csv
import json

import pytest
from mlflow_fixtures import tiny_config

from lmforge.evaluate import evaluate
from lmforge.registry import promote, register


def test_report_metrics_and_plots(trained_stages):
    out = trained_stages["evaluate"]
    report = json.loads((out / "report.json").read_text())
    n_test = sum(1 for _ in (trained_stages["augmented"] / "labelled" / "test.jsonl").open())
    assert report["classifier"]["n_test"] == n_test
    # On the separable toy set the fine-tuned classifier must beat the majority class.
    assert report["classifier"]["accuracy"] > report["majority"]["accuracy"]
    assert report["majority"]["label"] == "ham"
    assert report["baseline"] is not None and report["champion"] is None
    assert report["lm"]["perplexity"] > 1.0
    assert report["gate"]["passed"] is True
    assert sum(map(sum, report["confusion"])) == n_test
    rows = list(csv.DictReader((out / "plots" / "confusion.csv").open()))
    assert len(rows) == n_test and {r["actual"] for r in rows} == {"ham", "spam"}
    correct = sum(r["actual"] == r["predicted"] for r in rows)
    assert correct / n_test == pytest.approx(report["classifier"]["accuracy"])
    assert (out / "plots" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    samples = json.loads((out / "samples.json").read_text())
    assert [s["prompt"] for s in samples] == tiny_config().evaluate.sample_prompts
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["macro_f1"] == report["classifier"]["macro_f1"]
    assert metrics["gate_passed"] == 1
    # One report: per-model numbers (what the registry logs), the classifier's confusion once.
    assert list(report) == [
        "labels",
        "primary_metric",
        "input_example",
        "lm",
        "samples",
        "classifier",
        "baseline",
        "majority",
        "champion",
        "gate",
        "confusion",
    ]
    assert "confusion" not in report["classifier"] and "confusion" not in report["majority"]
    labels = report["labels"]
    counted = [
        [sum(r["actual"] == a and r["predicted"] == p for r in rows) for p in labels]
        for a in labels
    ]
    assert counted == report["confusion"]  # the plots come from the same predictions
    md = (out / "report.md").read_text()
    assert "majority class (ham)" in md and "Perplexity" in md


@pytest.mark.slow
def test_gate_fails_below_threshold_and_compares_with_the_champion(
    embedded_store, trained_stages, tmp_path
):
    stages = trained_stages
    register(
        embedded_store, stages["pretrain"], stages["finetune"], stages["evaluate"], tmp_path / "reg"
    )
    promote(embedded_store, embedded_store.register.classifier_model_name)
    cfg = tiny_config(
        "register.min_primary=1.01", f"tracking.artifact_location={tmp_path / 'mlartifacts'}"
    )
    result = evaluate(
        cfg,
        stages["pretrain"],
        stages["finetune"],
        stages["tokenized"],
        stages["augmented"],
        tmp_path / "eval",
    )
    assert result.passed is False
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    failed = [c for c in report["gate"]["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == ["threshold"]
    assert ">= 1.0100 required" in failed[0]["detail"]
    # The champion (the same model, loaded through the alias) scores the same on the same split.
    assert result.champion_version == "1"
    assert report["champion"]["macro_f1"] == pytest.approx(report["classifier"]["macro_f1"])
    assert any(c["name"] == "beats champion v1" for c in report["gate"]["comparisons"])


def test_output_folder_is_replaced_whole_or_not_at_all(tmp_path):
    from lmforge.outputs import atomic_output_dir

    out = tmp_path / "evaluate"
    out.mkdir()
    (out / "report.json").write_text("old")
    with pytest.raises(RuntimeError), atomic_output_dir(out) as tmp:
        (tmp / "report.json").write_text("half")
        raise RuntimeError("crash mid-write")
    assert (out / "report.json").read_text() == "old"
    with atomic_output_dir(out) as tmp:
        (tmp / "metrics.json").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluate"]  # no temp folders left


def _champion_with_custom_code(cfg, root, marker, where: str) -> None:
    """Register a champion whose files point transformers at code of their own: ``where`` is
    ``"mlmodel"`` (the MLmodel names a class transformers lacks) or ``"config"`` (only the model
    config's ``auto_map`` does). Importing that code would write ``marker``."""
    import mlflow
    import yaml

    from lmforge import tracking

    (root / "model").mkdir(parents=True)
    (root / "components" / "tokenizer").mkdir(parents=True)
    (root / "model" / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    custom = "EvilForSequenceClassification"
    config = {"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]}
    flavor = {
        "task": "text-classification",
        "instance_type": "TextClassificationPipeline",
        "pipeline_model_type": "LlamaForSequenceClassification",
        "model_binary": "model",
        "components": ["tokenizer"],
        "tokenizer_type": "PreTrainedTokenizerFast",
    }
    if where == "mlmodel":
        flavor["pipeline_model_type"] = custom
    else:
        config["auto_map"] = {"AutoModelForSequenceClassification": f"modeling_evil.{custom}"}
    (root / "model" / "config.json").write_text(json.dumps(config))
    (root / "MLmodel").write_text(yaml.safe_dump({"flavors": {"transformers": flavor}}))
    client = tracking.client(cfg)
    name = cfg.register.classifier_model_name
    client.create_registered_model(name)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(root), "classifier")
    mv = client.create_model_version(
        name, f"runs:/{run.info.run_id}/classifier", run_id=run.info.run_id
    )
    client.set_registered_model_alias(name, cfg.register.champion_alias, mv.version)


@pytest.mark.parametrize("where", ["mlmodel", "config"])
def test_a_champion_naming_code_outside_transformers_is_refused(
    where, embedded_store, trained_stages, tmp_path
):
    from lmforge.errors import RegistryError

    marker = tmp_path / "code-ran"
    _champion_with_custom_code(embedded_store, tmp_path / "evil", marker, where)
    stages = trained_stages
    reason = {
        "mlmodel": "pipeline_model_type = 'EvilForSequenceClassification': a class outside",
        "config": "model/config.json.auto_map = ",
    }[where]
    with pytest.raises(RegistryError, match="refused, loading it could run code") as refused:
        evaluate(
            embedded_store,
            stages["pretrain"],
            stages["finetune"],
            stages["tokenized"],
            stages["augmented"],
            tmp_path / "eval",
        )
    assert reason in str(refused.value)
    assert "model/modeling_evil.py: Python source" in str(refused.value)
    assert not marker.exists()  # nothing from the registry ran
    assert not (tmp_path / "eval").exists()  # and nothing was written
