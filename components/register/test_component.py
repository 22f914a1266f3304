"""The register component in the full local pipeline run: versions, alias and KFP tags in MLflow."""

import json

from lmforge_components.testing import micro_config


def test_register_creates_challenger_versions_tagged_with_the_kfp_task(full_pipeline_run):
    import mlflow

    cfg = micro_config()
    task = full_pipeline_run.task("register")
    registered = json.loads((task / "registered" / "registered.json").read_text())
    client = mlflow.MlflowClient(full_pipeline_run.tracking_uri)
    challenger = client.get_model_version_by_alias(
        cfg.register.classifier_model_name, cfg.register.challenger_alias
    )
    assert str(challenger.version) == str(registered["classifier"]["version"])
    run = client.get_run(registered["run_id"])
    assert run.data.tags["kfp.task_name"] == "register"
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["kfp.run_id"] == registered["pipeline_run_id"]
