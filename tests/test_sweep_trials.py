"""The sweep pipeline's step functions in process: the plan, a failing trial, picking the best."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from lmforge.config import load_config
from lmforge.errors import ConfigError, TrainingError
from lmforge.sweep import space, trials

SPACE = {
    "pretrain.lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2},
    "pretrain.warmup_steps": {"type": "int", "low": 0, "high": 3},
}


def config(*extra: str, space_=SPACE):
    return load_config(None, [f"sweep.space={json.dumps(space_)}", *extra])


def test_plan_is_seeded_points_of_the_space_or_the_grid_in_order():
    planned = trials.plan(config("sweep.n_trials=5", "sweep.seed=3"))
    assert [t["number"] for t in planned] == [0, 1, 2, 3, 4]
    points = [json.loads(t["params"]) for t in planned]
    assert all(space.inside(SPACE[k], v) for p in points for k, v in p.items())
    assert len({p["pretrain.lr"] for p in points}) == 5
    assert trials.plan(config("sweep.n_trials=5", "sweep.seed=3")) == planned  # seeded
    grid = {"pretrain.warmup_steps": SPACE["pretrain.warmup_steps"]}
    planned = trials.plan(config("sweep.sampler=grid", "sweep.n_trials=3", space_=grid))
    assert [json.loads(t["params"]) for t in planned] == [
        {"pretrain.warmup_steps": w} for w in (0, 1, 2)
    ]
    with pytest.raises(ConfigError, match=r"sweep\.step"):
        trials.plan(config("sweep.step=finetune", "sweep.objective=val_macro_f1"))


def test_a_failing_trial_is_a_fail_row_not_an_exception(tmp_path):
    """The trial's step raises (here: no tokenized data); the row says so, the task succeeds."""
    cfg = config()
    trial = {"number": 1, "params": json.dumps({"pretrain.lr": 0.002})}
    row = trials.sweep_trial(cfg, tmp_path / "missing-tokenized", tmp_path / "out", trial)
    assert (row["number"], row["state"]) == (1, "FAIL")
    assert "objective" not in row and row["error"].startswith("DataError: ")
    assert "missing-tokenized" in row["error"]
    assert json.loads(row["params"]) == {"pretrain.lr": 0.002}


def test_pick_best_writes_best_yaml_and_the_trials_table(tmp_path):
    cfg = config()
    rows = [
        {
            "number": 2,
            "params": json.dumps({"pretrain.lr": 0.01, "pretrain.warmup_steps": 1}),
            "state": "COMPLETE",
            "objective": 3.5,
            "error": "",
            "out_dir": "b",
            "seconds": 1.0,
        },
        {
            "number": 0,
            "params": json.dumps({"pretrain.lr": 0.002, "pretrain.warmup_steps": 0}),
            "state": "COMPLETE",
            "objective": 3.1,
            "error": "",
            "out_dir": "a",
            "seconds": 1.0,
        },
        {
            "number": 1,
            "params": json.dumps({"pretrain.lr": 0.03, "pretrain.warmup_steps": 3}),
            "state": "FAIL",
            "error": "TrainingError: diverged",
            "out_dir": "c",
            "seconds": 0.5,
        },
    ]
    summary = trials.pick_best(cfg, rows, tmp_path / "best")
    assert (summary["best_trial"], summary["best_value"]) == (0, 3.1)
    assert (summary["complete"], summary["failed"]) == (2, 1)
    best = yaml.safe_load((tmp_path / "best" / "best.yaml").read_text())
    assert best == {"pretrain": {"lr": 0.002, "warmup_steps": 0}}
    table = list(csv.DictReader((tmp_path / "best" / "trials.csv").open()))
    assert [(r["number"], r["state"]) for r in table] == [
        ("0", "COMPLETE"),
        ("1", "FAIL"),
        ("2", "COMPLETE"),
    ]
    assert table[1]["objective"] == "" and "diverged" in table[1]["error"]
    maximize = trials.pick_best(config("sweep.objective=tokens_per_s"), rows, tmp_path / "max")
    assert maximize["best_trial"] == 2
    with pytest.raises(TrainingError, match="no trial completed"):
        trials.pick_best(cfg, [rows[2]], tmp_path / "none")
    assert not (tmp_path / "none").exists()
