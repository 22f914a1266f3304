"""``lmforge sweep``: micro sweeps of the real pretrain step, with a real MLflow store and Optuna.

The sweeps train a one-layer width-32 model for six steps on the synthetic tokenized data; the
first trial of the module pays the imports, later ones take about a second each.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from lmforge.cli import main
from lmforge.config import load_config
from lmforge.errors import ConfigError
from lmforge.sweep import space
from lmforge.sweep.run import StepInputs, counted, sweep
from lmforge.train.synthetic import write_synthetic_tokenized

MICRO = [
    "model.n_layers=1",
    "model.d_model=32",
    "model.n_heads=2",
    "model.max_seq_len=32",
    "pretrain.max_steps=6",
    "pretrain.micro_batch_size=4",
    "pretrain.warmup_steps=1",
    "pretrain.log_every=3",
    "pretrain.eval_every=3",
    "pretrain.eval_batches=1",
    "pretrain.ckpt_every=0",
    "pretrain.precision=fp32",
    "pretrain.num_threads=1",
]
SPACE = {
    "pretrain.lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2},
    "pretrain.warmup_steps": {"type": "int", "low": 0, "high": 3},
}


@pytest.fixture(scope="module")
def env(tmp_path_factory, blank_store_db):
    """Synthetic tokenized data and one MLflow store (a copy of the blank one) for the module."""
    root = tmp_path_factory.mktemp("sweep")
    shutil.copyfile(blank_store_db, root / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("HF_HUB_OFFLINE", "1")
        for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            mp.delenv(var, raising=False)
        data = write_synthetic_tokenized(
            root / "tokenized", n_blocks={"train": 64, "validation": 8}
        )
        yield {"root": root, "data": data, "store": [f"tracking.artifact_location={root / 'a'}"]}


def config(env, *extra: str, space_=SPACE):
    return load_config(None, [*MICRO, *env["store"], f"sweep.space={json.dumps(space_)}", *extra])


def rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "trials.csv").open()))


def trial_runs(parent_id: str) -> list:
    client = mlflow.MlflowClient()
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


@pytest.fixture(scope="module")
def first_sweep(env):
    out = env["root"] / "out"
    result = sweep(config(env, "sweep.n_trials=3"), out, StepInputs(tokenized=env["data"]))
    return out, result


@pytest.mark.slow
def test_best_yaml_is_the_best_row_and_inside_the_space(first_sweep):
    out, result = first_sweep
    table = rows(out)
    assert [r["state"] for r in table] == ["COMPLETE"] * 3
    best_row = min(table, key=lambda r: float(r["objective"]))
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best == {
        "pretrain": {
            "lr": float(best_row["pretrain.lr"]),
            "warmup_steps": int(best_row["pretrain.warmup_steps"]),
        }
    }
    assert int(best_row["number"]) == result.best_trial
    for key, spec in SPACE.items():
        section, name = key.split(".")
        assert space.inside(spec, best[section][name])
    # the objective is the trial's own metrics.json value
    metrics = json.loads((Path(best_row["out_dir"]) / "metrics.json").read_text())
    assert metrics["val_loss"] == pytest.approx(float(best_row["objective"]))
    assert (out / "plots" / "objective.png").stat().st_size > 1000
    # best.yaml merges into a config: a params.yaml fragment
    merged = load_config(None, [f"pretrain.lr={best['pretrain']['lr']}"])
    assert merged.pretrain.lr == best["pretrain"]["lr"]


@pytest.mark.slow
def test_each_trial_is_a_nested_mlflow_run_with_params_and_objective(first_sweep):
    out, result = first_sweep
    by_trial = {
        int(r.data.tags["lmforge.sweep.trial"]): r for r in trial_runs(result.mlflow_parent_run_id)
    }
    assert sorted(by_trial) == [0, 1, 2]
    for row in rows(out):
        run = by_trial[int(row["number"])]
        assert run.info.status == "FINISHED"
        assert run.data.tags["lmforge.sweep.state"] == "COMPLETE"
        assert float(run.data.params["pretrain.lr"]) == float(row["pretrain.lr"])
        assert run.data.params["pretrain.warmup_steps"] == row["pretrain.warmup_steps"]
        assert run.data.metrics["objective"] == pytest.approx(float(row["objective"]))
        assert "val_loss" in run.data.metrics  # the step's own per-step metrics are there too
        # Its model: recorded as a LoggedModel of the trial's run, ranked, weights not uploaded.
        (model,) = mlflow.MlflowClient().search_logged_models(
            [run.info.experiment_id],
            filter_string=f"source_run_id = '{run.info.run_id}' AND name = 'language_model'",
        )
        assert model.tags["lmforge.model_dir"] == "model"
        assert "val_loss" in {m.key for m in model.metrics}
    parent = mlflow.MlflowClient().get_run(result.mlflow_parent_run_id)
    assert parent.info.run_name == "sweep-lmforge-sweep"
    assert parent.data.metrics["best_objective"] == pytest.approx(result.best_value)


@pytest.mark.slow
def test_resume_keeps_finished_trials_and_redoes_the_interrupted_one(env, first_sweep):
    out, first = first_sweep
    before = {r["number"]: Path(r["out_dir"], "metrics.json").stat().st_mtime_ns for r in rows(out)}
    # What a sweep killed during a trial leaves: that trial RUNNING in the study.
    cfg = config(env, "sweep.n_trials=4", "sweep.pruning=false")
    study = optuna.load_study(study_name="lmforge-sweep", storage=f"sqlite:///{out / 'optuna.db'}")
    killed = study.ask(space.distributions(cfg.sweep))

    result = sweep(cfg, out, StepInputs(tokenized=env["data"]))
    assert result.ran_now == 1
    table = rows(out)
    assert [r["state"] for r in table] == ["COMPLETE"] * 3 + ["FAIL", "COMPLETE"]
    assert "interrupted" in table[3]["error"]
    assert float(table[4]["pretrain.lr"]) == killed.params["pretrain.lr"]  # redone, once
    after = {r["number"]: Path(r["out_dir"], "metrics.json").stat().st_mtime_ns for r in table[:3]}
    assert after == before  # finished trials were not run again
    assert result.mlflow_parent_run_id == first.mlflow_parent_run_id
    assert result.complete == 4
    # a rerun with nothing missing runs nothing
    assert sweep(cfg, out, StepInputs(tokenized=env["data"])).ran_now == 0


@pytest.mark.slow
def test_median_pruner_stops_a_trial_worse_than_the_others(env, first_sweep):
    """The slowest point of the space (lowest lr, longest warmup) is far behind the median of
    the finished trials at the first evaluation (step 3 of 6): it is pruned there."""
    out, first = first_sweep
    study = optuna.load_study(study_name="lmforge-sweep", storage=f"sqlite:///{out / 'optuna.db'}")
    n_before = counted(study)  # finished trials, not the interrupted one
    study.enqueue_trial({"pretrain.lr": 1e-3, "pretrain.warmup_steps": 3})
    cfg = config(env, f"sweep.n_trials={n_before + 1}", "sweep.prune_startup_trials=3")
    result = sweep(cfg, out, StepInputs(tokenized=env["data"]))
    last = rows(out)[-1]
    assert (result.ran_now, last["state"]) == (1, "PRUNED")
    assert "pruned at step 3" in last["error"]
    assert not (Path(last["out_dir"]) / "metrics.json").exists()  # stopped before the end
    run = {
        int(r.data.tags["lmforge.sweep.trial"]): r for r in trial_runs(first.mlflow_parent_run_id)
    }
    assert run[int(last["number"])].data.tags["lmforge.sweep.state"] == "PRUNED"


@pytest.mark.slow
def test_failed_trial_is_recorded_and_the_sweep_goes_on(env, capsys):
    """Through the CLI: a grid where one point makes the step raise (an initial weight scale that
    lmforge's config lets through and the model's Hugging Face config rejects)."""
    out = env["root"] / "grid"
    grid = {"model.init_std": {"type": "choice", "values": [0.02, 1.0e30]}}
    args = ["sweep", "--out", str(out), "--tokenized", str(env["data"])]
    for item in [*MICRO, *env["store"], f"sweep.space={json.dumps(grid)}", "sweep.sampler=grid"]:
        args += ["--set", item]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["complete"], result["failed"]) == (1, 1)
    table = {float(r["model.init_std"]): r for r in rows(out)}
    assert table[1e30]["state"] == "FAIL"
    assert "initializer_range" in table[1e30]["error"]
    assert table[0.02]["state"] == "COMPLETE"
    assert yaml.safe_load((out / "best.yaml").read_text()) == {"model": {"init_std": 0.02}}
    runs = {
        r.data.tags["lmforge.sweep.state"]: r for r in trial_runs(result["mlflow_parent_run_id"])
    }
    assert runs["FAIL"].info.status == "FAILED"
    assert "initializer_range" in runs["FAIL"].data.tags["lmforge.sweep.error"]
    assert runs["COMPLETE"].info.status == "FINISHED"


@pytest.mark.parametrize(
    ("dimension", "message"),
    [
        ({"pretrain.lrr": {"type": "uniform", "low": 0, "high": 1}}, "pretrain.lrr: unknown key"),
        ({"lr": {"type": "uniform", "low": 0, "high": 1}}, "space.lr: unknown key"),
        ({"pretrain.lr": {"type": "normal", "low": 0, "high": 1}}, "pretrain.lr.type: 'normal'"),
        ({"pretrain.lr": {"type": "uniform", "low": 0.1}}, "type uniform needs high"),
        ({"pretrain.lr": {"type": "uniform", "low": 0.2, "high": 0.1}}, "must be below high"),
        ({"pretrain.lr": {"type": "loguniform", "low": 0, "high": 0.1}}, "needs low > 0"),
        ({"pretrain.lr": {"type": "uniform", "lo": 0, "high": 1}}, "pretrain.lr.lo: unknown key"),
        ({"pretrain.warmup_steps": {"type": "uniform", "low": 0, "high": 9}}, "use type int"),
        ({"pretrain.parallel": {"type": "int", "low": 0, "high": 9}}, "use type choice"),
        ({"pretrain.lr": {"type": "choice", "values": []}}, "non-empty list"),
        ({"pretrain.warmup_steps": {"type": "int", "low": 0.5, "high": 9}}, "integer low"),
    ],
)
def test_bad_space_is_a_config_error_naming_the_key(dimension, message):
    with pytest.raises(ConfigError, match=r"sweep\.space") as err:
        load_config(None, [f"sweep.space={json.dumps(dimension)}"])
    assert message in str(err.value)


def test_grid_needs_finite_dimensions_and_values_must_make_a_valid_config(tmp_path):
    with pytest.raises(
        ConfigError, match=r"sweep\.space\.pretrain\.lr: type loguniform has no grid"
    ):
        load_config(None, ["sweep.sampler=grid"])  # the default space has a log-uniform lr
    too_high = {"pretrain.lr": {"type": "uniform", "low": 0.1, "high": 2.0}}
    cfg = load_config(None, [f"sweep.space={json.dumps(too_high)}"])
    with pytest.raises(ConfigError, match=r"sweep.space.pretrain.lr: 2.0 is not allowed.*range"):
        sweep(cfg, tmp_path / "out")
    with pytest.raises(ConfigError, match=r"sweep\.objective: 'macro_f1' is not in pretrain's"):
        sweep(load_config(None, ["sweep.objective=macro_f1"]), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing was started


def test_a_trial_with_its_own_preset_trains_that_presets_shape():
    cfg = load_config(None, ["model.dropout=0.1"])  # cpu-tiny, and one key written by hand
    trial = space.trial_config(cfg, {"model.preset": "cpu-small"}, 0)
    assert (trial.model.n_layers, trial.model.d_model, trial.model.n_heads) == (6, 384, 6)
    assert trial.model.dropout == 0.1  # a hand-set key still wins over any preset
    same = space.trial_config(cfg, {"pretrain.lr": 1e-3}, 1)
    assert (same.model.n_layers, same.model.d_model) == (cfg.model.n_layers, cfg.model.d_model)
