"""``sweep.direction`` follows from the objective: a sweep of a score keeps the best score.

Issue 27, finding 7: ``sweep.step=finetune sweep.objective=val_macro_f1`` loaded with the default
``minimize``, wrote the lowest-F1 trial to best.yaml and pruned the good ones.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from lmforge.config import load_config
from lmforge.errors import ConfigError
from lmforge.sweep import katib, trials
from lmforge.sweep.run import StepInputs, sweep

F1_SWEEP = ["sweep.step=finetune", "sweep.objective=val_macro_f1"]


def test_the_direction_follows_from_the_objective():
    assert load_config(None, F1_SWEEP).sweep.goal == "maximize"
    assert load_config(None, [*F1_SWEEP, "sweep.direction=maximize"]).sweep.goal == "maximize"
    assert load_config(None, []).sweep.goal == "minimize"  # val_loss
    assert load_config(None, ["sweep.objective=train_seconds"]).sweep.goal == "minimize"
    assert load_config(None, ["sweep.objective=tokens_per_s"]).sweep.goal == "maximize"


@pytest.mark.parametrize(
    ("objective", "direction"),
    [("val_macro_f1", "minimize"), ("val_loss", "maximize"), ("val_perplexity", "maximize")],
)
def test_a_direction_that_contradicts_the_objective_is_refused(objective, direction):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"sweep.objective={objective}", f"sweep.direction={direction}"])
    message = str(err.value)
    assert f"sweep.direction: {direction} contradicts sweep.objective {objective}" in message
    assert "set sweep.direction: auto" in message and "\n" not in message


def test_katib_and_the_pipeline_pick_use_the_objectives_direction(tmp_path):
    cfg = load_config(None, ["sweep.objective=tokens_per_s"])  # pretrain's, and a higher is better
    _, experiment = katib.render(
        cfg, Path("outputs/tokenized"), Path("outputs/sweep"), root=Path.cwd()
    )
    assert experiment["spec"]["objective"]["type"] == "maximize"
    f1 = load_config(None, F1_SWEEP)
    rows = [
        {"number": n, "params": json.dumps({"pretrain.lr": lr}), "state": "COMPLETE"}
        | {"objective": v}
        for n, lr, v in ((0, 0.001, 0.2), (1, 0.002, 0.9), (2, 0.003, 0.5))
    ]
    summary = trials.pick_best(f1, rows, tmp_path / "picked")
    assert (summary["best_trial"], summary["direction"]) == (1, "maximize")


@pytest.mark.slow
def test_a_finetune_sweep_of_macro_f1_keeps_the_highest_f1_trial(tiny_stages, embedded_store):
    """Two real finetune trials, one that learns (lr 0.003) and one that cannot (lr 1e-7)."""
    grid = {"finetune.lr": {"type": "choice", "values": [1e-7, 0.003]}}
    base = embedded_store.to_dict()
    cfg = load_config(
        None,
        [
            f"tracking.artifact_location={base['tracking']['artifact_location']}",
            "finetune.max_steps=30",
            "finetune.micro_batch_size=8",
            "finetune.max_length=24",
            "finetune.warmup_steps=3",
            "finetune.eval_every=10",
            "finetune.eval_batches=2",
            "finetune.ckpt_every=0",
            "finetune.precision=fp32",
            "finetune.num_threads=1",
            *F1_SWEEP,
            f"sweep.space={json.dumps(grid)}",
            "sweep.sampler=grid",
            "sweep.n_trials=2",
            "sweep.prune_startup_trials=0",  # the pruner may act from the first evaluation on
        ],
    )
    out = Path(base["tracking"]["artifact_location"]).parent / "sweep"
    inputs = StepInputs(pretrained=tiny_stages["pretrain"], augmented=tiny_stages["augmented"])
    result = sweep(cfg, out, inputs)

    table = list(csv.DictReader((out / "trials.csv").open()))
    f1 = {float(r["finetune.lr"]): float(r["objective"]) for r in table if r["objective"]}
    assert f1[0.003] > f1[1e-7]  # the two trials really differ
    assert result.direction == "maximize"
    assert (result.best_value, result.best_params) == (f1[0.003], {"finetune.lr": 0.003})
    assert yaml.safe_load((out / "best.yaml").read_text()) == {"finetune": {"lr": 0.003}}
    assert [r["state"] for r in table] == ["COMPLETE", "COMPLETE"]  # the good one not pruned
