"""``lmforge pipeline run-local``: the full pipeline through KFP's local SubprocessRunner.

One real run of the compiled DAG on micro data and a micro config, from the console script:
every task a subprocess, pretraining on the launcher's local runner, MLflow in the run's folder
(the session's ``full_pipeline_run``, whose task outputs the component tests assert on too).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge_components import testing
from lmforge_components.testing import run_pipeline_cli as run_local


@pytest.mark.slow
def test_full_pipeline_runs_locally_and_registers_a_challenger(full_pipeline_run):
    import mlflow

    result = full_pipeline_run.result()  # the CLI exited 0 and printed the run's summary
    run_dir = Path(result["run_dir"])
    for task in ("validate", "augment", "tokenize", "pretrain", "finetune", "evaluate", "register"):
        assert (run_dir / task / "executor_output.json").exists(), task
    assert result["gate_passed"] is True
    registered = result["registered"]
    assert registered is not None

    client = mlflow.MlflowClient(full_pipeline_run.tracking_uri)
    challenger = client.get_model_version_by_alias("lmforge-classifier", "challenger")
    assert str(challenger.version) == str(registered["classifier"]["version"])
    # One parent run tagged with the KFP run id; each step's run nested under it, tagged with
    # its task name.
    kfp_run_id = registered["pipeline_run_id"]
    runs = client.search_runs(
        [client.get_experiment_by_name("lmforge").experiment_id],
        filter_string=f"tags.`lmforge.pipeline_run_id` = '{kfp_run_id}'",
    )
    parents = [r for r in runs if r.data.tags.get("lmforge.stage") == "pipeline"]
    assert len(parents) == 1
    assert parents[0].data.tags["kfp.run_id"] == kfp_run_id
    steps = {r.data.tags.get("lmforge.stage"): r for r in runs if r not in parents}
    assert {"pretrain", "finetune", "evaluate", "register"} <= set(steps)
    for stage, run in steps.items():
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id, stage
        assert run.data.tags["kfp.task_name"] == stage


def test_a_failing_step_stops_the_run_with_one_clear_error(tmp_path):
    data = testing.build_micro_data(tmp_path / "data")
    with (data / "labelled" / "spam.jsonl").open("a") as fh:
        fh.write("{not json\n")
    proc = run_local(tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "local run of full failed" in proc.stderr
    assert "Inner task failed: 'validate'" in proc.stderr  # names the failing task
    assert "spam.jsonl" in proc.stdout + proc.stderr  # the step's own message names the file
    (run_dir,) = (tmp_path / "kfp" / "runs").iterdir()
    assert not (run_dir / "augment").exists()  # nothing downstream ran


def test_missing_raw_data_is_named_before_anything_runs(tmp_path):
    proc = run_local(tmp_path)
    assert proc.returncode == 1
    assert "data: folder not found" in proc.stderr and "make data" in proc.stderr
    assert not (tmp_path / "kfp").exists()
