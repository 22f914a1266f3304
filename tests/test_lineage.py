"""MLflow 3 lineage after a micro chain (pretrain, finetune, evaluate, register, in-process, one
real store): from a registered version alone, reach the training run, its params, its datasets
with their DVC digests, its checkpoints and each model's own metrics; each weight file is
stored once; versions registered the old way still promote, roll back and deploy."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from mlflow_fixtures import _store_env, tiny_config

from lmforge import lineage, tracking
from lmforge.evaluate import evaluate
from lmforge.registry import promote, provenance, register
from lmforge.registry.trained import REGISTER_RUN_TAG
from lmforge.train.finetune import finetune
from lmforge.train.pretrain import pretrain

MICRO_LM = [
    "model.n_layers=1",
    "model.d_model=32",
    "model.n_heads=2",
    "model.max_seq_len=32",
    "pretrain.max_steps=10",
    "pretrain.micro_batch_size=4",
    "pretrain.eval_every=5",
    "pretrain.eval_batches=1",
    "pretrain.ckpt_every=5",
    "pretrain.keep_last=2",
    "pretrain.precision=fp32",
    "pretrain.num_threads=1",
    "finetune.max_steps=10",
    "finetune.eval_every=5",
    "finetune.ckpt_every=5",
]


@pytest.fixture(scope="module")
def chain(tiny_stages, tmp_path_factory, blank_store_db):
    """The four steps on the tiny data into one fresh store; the config and the step folders."""
    root = tmp_path_factory.mktemp("lineage")
    shutil.copyfile(blank_store_db, root / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        _store_env(mp, f"sqlite:///{root / 'mlflow.db'}")
        for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            mp.delenv(var, raising=False)
        cfg = tiny_config(f"tracking.artifact_location={root / 'mlartifacts'}", *MICRO_LM)
        out = {name: root / name for name in ("pretrain", "finetune", "evaluate", "register")}
        pretrain(cfg, tiny_stages["tokenized"], out["pretrain"])
        finetune(cfg, out["pretrain"], tiny_stages["augmented"], out["finetune"])
        evaluate(
            cfg,
            out["pretrain"],
            out["finetune"],
            tiny_stages["tokenized"],
            tiny_stages["augmented"],
            out["evaluate"],
        )
        result = register(cfg, out["pretrain"], out["finetune"], out["evaluate"], out["register"])
        yield cfg, out, result, root, mp


def _inputs(run) -> dict[str, tuple[str, str, dict]]:
    found = {}
    for entry in run.inputs.dataset_inputs:
        context = {t.key: t.value for t in entry.tags}[lineage.CONTEXT_TAG]
        found[entry.dataset.name] = (
            entry.dataset.digest,
            context,
            json.loads(entry.dataset.source),
        )
    return found


@pytest.mark.slow
def test_a_registered_version_leads_to_its_training_run_data_checkpoints_and_metrics(
    chain, tiny_stages
):
    cfg, out, result, root, _ = chain
    client = tracking.client(cfg)
    name = cfg.register.classifier_model_name
    version = client.get_model_version(name, result.classifier.version)

    # The version is the LoggedModel its training run logged: no copy made by register.
    model_id = lineage.version_model_id(version)
    assert version.source == f"models:/{model_id}"
    model = client.get_logged_model(model_id)
    training = client.get_run(version.run_id)
    assert model.source_run_id == training.info.run_id
    assert training.data.tags["lmforge.stage"] == "finetune"
    assert training.data.params["finetune.max_steps"] == "10"
    assert version.tags[REGISTER_RUN_TAG] == result.run_id != training.info.run_id

    # Its data: the labelled splits with the digests DVC records, named by path and commit.
    labelled = Path(tiny_stages["augmented"]) / "labelled"
    inputs = _inputs(training)
    assert inputs["labelled-train"][:2] == (lineage.dvc_md5(labelled / "train.jsonl"), "training")
    assert inputs["labelled-validation"][1] == "validation"
    assert inputs["labelled-train"][2]["git_commit"] == training.data.tags["lmforge.git_commit"]
    assert inputs["labelled-train"][2]["dvc_path"].endswith("labelled/train.jsonl")

    # Its own metrics only: validation from training, test from evaluate; not the LM's.
    report = json.loads((out["evaluate"] / "report.json").read_text())
    own = {m.key: m.value for m in model.metrics}
    assert own["test_macro_f1"] == pytest.approx(report["classifier"]["macro_f1"])
    assert "val_macro_f1" in own and not any("perplexity" in k for k in own)
    tested = next(m for m in model.metrics if m.key == "test_accuracy")
    assert tested.dataset_digest == lineage.dvc_md5(labelled / "test.jsonl")
    lm_version = client.get_model_version(cfg.register.lm_model_name, result.lm.version)
    lm = client.get_logged_model(lineage.version_model_id(lm_version))
    lm_own = {m.key: m.value for m in lm.metrics}
    assert lm_own["test_perplexity"] == pytest.approx(report["lm"]["perplexity"])
    assert not any("macro_f1" in k or "accuracy" in k for k in lm_own)
    blocks = Path(tiny_stages["tokenized"]) / "blocks"
    lm_inputs = _inputs(client.get_run(lm.source_run_id))
    assert lm_inputs["blocks-train"][0] == lineage.dvc_md5(blocks / "train.bin")
    baseline_id = lineage.trained_models(out["finetune"])[lineage.BASELINE_MODEL]
    base_own = {m.key: m.value for m in client.get_logged_model(baseline_id).metrics}
    assert base_own["test_macro_f1"] == pytest.approx(report["baseline"]["macro_f1"])

    # Its checkpoints: LoggedModels of the same run at their steps, ranked by validation loss.
    ranked = client.search_logged_models(
        [model.experiment_id],
        filter_string=f"source_run_id = '{training.info.run_id}' AND name LIKE 'classifier-step-%'",
        order_by=[{"field_name": "metrics.val_loss", "ascending": True}],
    )
    assert {m.name for m in ranked} == {"classifier-step-5", "classifier-step-10"}
    assert all(m.tags["lmforge.checkpoint"].startswith("checkpoints/model/") for m in ranked)
    losses = [{x.key: x.value for x in m.metrics}["val_loss"] for m in ranked]
    assert losses == sorted(losses)

    # A model card a person reads in the UI, from the run's facts.
    card = version.description
    assert "text-classification" in card and "`ham`" in card and "`spam`" in card
    assert inputs["labelled-train"][0] in card and "baseline" in card and "Known limits" in card

    # Each weight file stored once: the LM, the classifier, the baseline.
    weights = list((root / "mlartifacts").rglob("*.safetensors"))
    assert len(weights) == 3, weights
    assert len({p.read_bytes()[:4096] + p.name.encode() for p in weights}) == 3


@pytest.mark.slow
def test_the_gate_and_deploy_read_mlflow_fields_and_old_versions_still_promote_and_deploy(chain):
    """An old version (registered from an artifact folder: no LoggedModel, lineage and metrics in
    ``lmforge.*`` tags) becomes champion, is replaced by a new version gated on its LoggedModel's
    test metrics, comes back by rollback, and deploys with its tags as annotations; the new
    version deploys with the lineage MLflow's fields give."""
    from lmforge.registry import METRIC_TAG
    from lmforge.serve.kserve import annotations, resolve

    cfg, _, result, root, _ = chain
    # The store's file:// artifacts mapped onto a PVC, as on a cluster.
    mapped = {f"file://{root / 'mlartifacts'}/": "pvc://lmforge-work/mlartifacts/"}
    cfg = dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, storage_prefixes=mapped))
    client = tracking.client(cfg)
    name = cfg.register.classifier_model_name
    new = client.get_model_version(name, result.classifier.version)
    folder = client.get_logged_model(lineage.version_model_id(new)).artifact_location
    old_tags = {
        "lmforge.git_commit": "0ld",
        "lmforge.data_version": "d0",
        METRIC_TAG + "macro_f1": "0.7",
    }
    old = client.create_model_version(name, folder, run_id=result.run_id, tags=old_tags)
    assert lineage.version_model_id(old) is None
    challenger = cfg.register.challenger_alias
    client.set_registered_model_alias(name, challenger, old.version)
    assert promote(cfg, name).champion == str(old.version)

    assert provenance.version_metrics(client, new)["macro_f1"] > 0.7  # its model's test_macro_f1
    client.set_registered_model_alias(name, challenger, new.version)
    promoted = promote(cfg, name)
    assert (promoted.action, promoted.champion) == ("promoted", str(new.version))
    notes = annotations(resolve(cfg, client, name, cfg.register.champion_alias))
    assert notes["lmforge.io/run_id"] == new.run_id  # the training run, from MLflow's field
    for key in ("git_commit", "data_version", "params_hash", "pipeline_run_id", "model_id"):
        assert notes[f"lmforge.io/{key}"], key
    assert float(notes["lmforge.io/metric.macro_f1"]) > 0.7

    back = promote(cfg, name, rollback=True)
    assert back.champion == str(old.version)
    notes = annotations(resolve(cfg, client, name, cfg.register.champion_alias))
    assert notes["lmforge.io/git_commit"] == "0ld" and notes["lmforge.io/metric.macro_f1"] == "0.7"
