"""The sweep pipeline through KFP's local runner: plan, one task per trial (ParallelFor), best.

Two grid trials of the micro pretrain on the shared micro tokenized data (a failing trial is
``tests/test_sweep_trials.py``'s, in process: the same functions, without the runner's cost),
and with ``ladder`` the smallest scaling ladder the fit takes (6 rungs of 2 and 4 steps).
"""

import csv
import json
from pathlib import Path

import mlflow
import pytest
import yaml

from lmforge_components.testing import micro_config
from lmforge_pipelines.run_local import run_local

GRID = {"model.init_std": {"type": "choice", "values": [0.02, 0.05]}}


@pytest.mark.slow
def test_sweep_pipeline_runs_the_trials_and_picks_the_best(upstream, kfp_workdir):
    kfp_workdir.mkdir(parents=True)
    cfg = micro_config(
        f"sweep.space={json.dumps(GRID)}",
        "sweep.sampler=grid",
        "sweep.n_trials=2",
        store=kfp_workdir,
    )
    result = run_local(cfg, "sweep", kfp_workdir, tokenized_dir=upstream["tokenized"])
    report = Path(result["run_dir"]) / "sweep-best" / "best"
    rows = {float(r["model.init_std"]): r for r in csv.DictReader((report / "trials.csv").open())}
    assert [rows[v]["state"] for v in (0.02, 0.05)] == ["COMPLETE", "COMPLETE"]
    objectives = {}
    for value in (0.02, 0.05):  # each trial's objective is its own pretrain's metrics.json
        metrics = json.loads((Path(rows[value]["out_dir"]) / "metrics.json").read_text())
        assert float(rows[value]["objective"]) == pytest.approx(metrics["val_loss"])
        objectives[value] = metrics["val_loss"]
    winner = min(objectives, key=objectives.get)
    assert yaml.safe_load((report / "best.yaml").read_text()) == {"model": {"init_std": winner}}
    assert result["best"]["best_params"] == {"model.init_std": winner}
    assert (result["best"]["complete"], result["best"]["failed"]) == (2, 0)
    assert (report / "plots" / "objective.png").stat().st_size > 1000


# The smallest ladder the fit takes (5 rungs, 2 sizes and 2 budgets among them): 3 widths x 2
# budgets of 2 and 4 steps (128 tokens a step).
LADDER = [
    'sweep.scaling_sizes=[{"n_layers": 1, "d_model": 16, "n_heads": 2}, '
    '{"n_layers": 1, "d_model": 32, "n_heads": 2}, {"n_layers": 1, "d_model": 48, "n_heads": 2}]',
    "sweep.scaling_tokens=[256, 512]",
    "sweep.scaling_bootstrap=2",
    "sweep.scaling_flops=1e9",
]


@pytest.mark.slow
def test_ladder_runs_one_task_per_rung_and_fits_the_law(upstream, kfp_workdir):
    kfp_workdir.mkdir(parents=True)
    cfg = micro_config(*LADDER, store=kfp_workdir)
    result = run_local(
        cfg, "sweep", kfp_workdir, tokenized_dir=upstream["tokenized"], arguments={"ladder": True}
    )
    run = Path(result["run_dir"])
    report = run / "sweep-best" / "best"
    table = list(csv.DictReader((report / "rungs.csv").open()))
    assert [r["state"] for r in table] == ["COMPLETE"] * 6
    assert [int(r["tokens_seen"]) for r in table] == [256, 512] * 3  # D: tokens trained on
    n = [int(r["n_non_embedding"]) for r in table]
    assert n[0] == n[1] < n[2] == n[3] < n[4] == n[5]
    # each row's loss is its own task's pretrain (one pretrained artifact per rung)
    rung_dirs = sorted(run.glob("for-loop-*/sweep-trial/pretrained/rungs/rung-*"))
    assert len(rung_dirs) == 6
    for where in rung_dirs:
        metrics = json.loads((where / "metrics.json").read_text())
        row = table[int(where.name.removeprefix("rung-"))]
        assert float(row["val_loss"]) == pytest.approx(metrics["val_loss"], abs=1e-5)

    fitted = json.loads((report / "report.json").read_text())
    assert set(fitted["law"]) == {"E", "A", "alpha", "B", "beta"}
    assert fitted["trust"]["points"] == 6 and fitted["fit"]["n_bootstrap"] == 2
    assert result["best"]["law"] == pytest.approx(fitted["law"])
    assert result["best"]["compute_optimal"]["flops"] == 1e9
    assert "How far to trust it" in (report / "report.md").read_text()
    for plot in ("scaling.png", "isoflop.png"):
        assert (report / "plots" / plot).stat().st_size > 5000

    # MLflow: the fit on the pipeline run's parent, each rung's pretrain run nested under it
    client = mlflow.MlflowClient(f"sqlite:///{kfp_workdir / 'mlflow.db'}")
    parent = client.get_run(result["best"]["mlflow_parent_run_id"])
    assert parent.data.metrics["scaling_alpha"] == pytest.approx(fitted["law"]["alpha"])
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(int(r.data.tags["lmforge.sweep.trial"]) for r in runs) == list(range(6))
