"""The register component through KFP's local runner: versions, alias and KFP tags in MLflow."""

import json

from kfp.dsl import Dataset, Model

from lmforge_components.register import build
from lmforge_components.testing import micro_config, run_one


def test_register_creates_challenger_versions_tagged_with_the_kfp_task(upstream, kfp_workdir):
    import mlflow

    cfg = micro_config("register.min_primary=0.0", store=kfp_workdir)
    inputs = {
        "pretrained": (upstream["pretrain"], Model),
        "finetuned": (upstream["finetune"], Model),
        "evaluation": (upstream["evaluate"], Dataset),
    }
    task = run_one(build(), cfg, kfp_workdir, inputs)
    registered = json.loads((task / "registered" / "registered.json").read_text())
    client = mlflow.MlflowClient(cfg.tracking.tracking_uri)
    challenger = client.get_model_version_by_alias(
        cfg.register.classifier_model_name, cfg.register.challenger_alias
    )
    assert str(challenger.version) == str(registered["classifier"]["version"])
    run = client.get_run(registered["run_id"])
    assert run.data.tags["kfp.task_name"] == "register"
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["kfp.run_id"] == registered["pipeline_run_id"]
