"""One parent MLflow run per pipeline run, a nested run per step, lineage tags on both."""

from __future__ import annotations

import pytest

from lmforge import tracking
from lmforge.config import load_config


def _runs(cfg):
    client = tracking.client(cfg)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    return client.search_runs([exp.experiment_id])


def test_steps_nest_under_one_parent_with_lineage(embedded_store):
    cfg = embedded_store
    with tracking.stage_run(cfg, "finetune", sections=("finetune",)) as first:
        pass
    with tracking.stage_run(cfg, "evaluate", sections=("evaluate",)) as second:
        pass
    runs = {r.data.tags[tracking.STAGE_TAG]: r for r in _runs(cfg)}
    assert sorted(runs) == ["evaluate", "finetune", "pipeline"]
    parent = runs["pipeline"]
    assert parent.info.status == "FINISHED"
    for stage, run in (("finetune", first), ("evaluate", second)):
        stored = runs[stage]
        assert stored.info.run_id == run.info.run_id
        assert stored.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert stored.data.tags[tracking.PARENT_RUN_TAG] == parent.info.run_id
        for key in ("lmforge.git_commit", "lmforge.data_version", "lmforge.params_hash"):
            assert stored.data.tags[key] == parent.data.tags[key]
    assert runs["finetune"].data.params["finetune.max_steps"] == str(cfg.finetune.max_steps)
    # The artifact root is the configured folder of the embedded store.
    exp = tracking.client(cfg).get_experiment_by_name(cfg.tracking.experiment)
    assert exp.artifact_location.endswith("/mlartifacts")


def test_a_failing_step_fails_its_run_and_the_parent(embedded_store):
    cfg = embedded_store
    with pytest.raises(ValueError), tracking.stage_run(cfg, "evaluate"):
        raise ValueError("boom")
    runs = {r.data.tags[tracking.STAGE_TAG]: r for r in _runs(cfg)}
    assert runs["evaluate"].info.status == "FAILED"
    assert runs["pipeline"].info.status == "FAILED"


def test_kubeflow_run_id_keys_the_parent(embedded_store, monkeypatch):
    monkeypatch.delenv("LMFORGE_PIPELINE_RUN_ID")
    monkeypatch.setenv("KFP_RUN_ID", "kfp-run-123")
    monkeypatch.setenv("KFP_TASK_NAME", "evaluate-task")
    cfg = embedded_store
    assert tracking.pipeline_run_id(cfg) == "kfp-run-123"
    with tracking.stage_run(cfg, "evaluate"):
        pass
    with tracking.stage_run(cfg, "register"):
        pass
    runs = _runs(cfg)
    parents = [r for r in runs if r.data.tags[tracking.STAGE_TAG] == "pipeline"]
    assert len(parents) == 1  # found again by its tag, not created twice
    assert parents[0].data.tags["kfp.run_id"] == "kfp-run-123"
    assert parents[0].data.tags[tracking.PIPELINE_RUN_TAG] == "kfp-run-123"
    steps = [r for r in runs if r.data.tags[tracking.STAGE_TAG] != "pipeline"]
    assert {r.data.tags["kfp.task_name"] for r in steps} == {"evaluate-task"}


def test_store_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None)
    assert tracking.tracking_uri(cfg) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.artifact_location(cfg) == (tmp_path / "mlartifacts").as_uri()
    # Against a server, its own artifact root applies: a local path would not be served.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.artifact_location(cfg) is None
    assert "--default-artifact-root" in tracking.ui_command(cfg)


def test_data_stages_track_without_kfp():
    """The data stages log through ``lmforge.tracking``; kfp (a component-only dependency) is
    never imported on their path."""
    import subprocess
    import sys

    code = (
        "import sys, lmforge.data.track as t, lmforge.tracking as k; t.log_outputs; "
        "print(any(m.startswith(('kfp', 'lmforge.kfp')) for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert tracking.flat_metrics({"a": 1, "b": {"c": 2.5, "d": "x"}}) == {"a": 1.0, "b.c": 2.5}


def test_steps_never_import_kfp_or_the_component_packages():
    """Dependencies point one way: the components and pipelines import the library, never the
    reverse; data, train, evaluate and the registry run without kfp."""
    import subprocess
    import sys

    steps = [
        "lmforge.data.validate",
        "lmforge.data.augment",
        "lmforge.data.tokenize",
        "lmforge.train.pretrain",
        "lmforge.train.finetune",
        "lmforge.evaluate",
        "lmforge.registry",
        "lmforge.launch.launcher",
    ]
    code = (
        f"import importlib, sys; [importlib.import_module(m) for m in {steps!r}]; "
        "print(sorted({m.split('.')[0] for m in sys.modules "
        "if m.startswith(('kfp', 'lmforge.kfp', 'lmforge_components', 'lmforge_pipelines'))}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_pipeline_run_on_kubeflow_tags_every_run_with_its_id(
    embedded_store, monkeypatch, tmp_path
):
    """As KFP tasks, the training steps (tolerant tracker) and the strict ones (stage_run) all
    carry the pipeline run's id, and nest under the one parent it keys."""
    from lmforge.train.tracker import TrainingTracker

    monkeypatch.delenv("LMFORGE_PIPELINE_RUN_ID")
    monkeypatch.setenv("KFP_RUN_ID", "kfp-run-456")
    cfg = embedded_store
    for stage in ("pretrain", "finetune"):
        monkeypatch.setenv("KFP_TASK_NAME", f"{stage}-task")
        tracker = TrainingTracker(cfg, stage, (), tmp_path / stage)
        assert tracker.close()["unsent"] == 0
    for stage in ("evaluate", "register"):
        monkeypatch.setenv("KFP_TASK_NAME", f"{stage}-task")
        with tracking.stage_run(cfg, stage):
            pass
    runs = {r.data.tags[tracking.STAGE_TAG]: r for r in _runs(cfg)}
    assert sorted(runs) == ["evaluate", "finetune", "pipeline", "pretrain", "register"]
    parent = runs.pop("pipeline").info.run_id
    for stage, run in runs.items():
        assert run.data.tags[tracking.PIPELINE_RUN_TAG] == "kfp-run-456", stage
        assert run.data.tags["kfp.task_name"] == f"{stage}-task"
        assert run.data.tags["mlflow.parentRunId"] == parent
