"""The sweep pipeline through KFP's local runner: plan, one task per trial (ParallelFor), best.

Two grid trials of the micro pretrain on the shared micro tokenized data (a failing trial is
``tests/test_sweep_trials.py``'s, in process: the same functions, without the runner's cost).
"""

import csv
import json
from pathlib import Path

import pytest
import yaml

from lmforge.kfp.local import run_local
from lmforge_components.testing import micro_config

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
