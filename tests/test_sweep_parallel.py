"""``sweep.parallelism``: trials at once, in worker processes sharing the Optuna study on disk."""

from __future__ import annotations

import json
import shutil

import mlflow
import optuna
import pytest

from lmforge.config import load_config
from lmforge.sweep.run import StepInputs, sweep
from lmforge.sweep.workers import trial_threads, with_threads
from lmforge.train.synthetic import write_synthetic_tokenized

MICRO = [
    "model.n_layers=1",
    "model.d_model=32",
    "model.n_heads=2",
    "model.max_seq_len=32",
    "pretrain.max_steps=6",
    "pretrain.micro_batch_size=4",
    "pretrain.warmup_steps=1",
    "pretrain.eval_every=3",
    "pretrain.eval_batches=1",
    "pretrain.ckpt_every=0",
    "pretrain.precision=fp32",
]
SPACE = {"pretrain.lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2}}


def test_threads_split_the_cores_between_concurrent_trials():
    assert trial_threads(2, cores=2) == 1
    assert trial_threads(3, cores=8) == 2
    assert trial_threads(4, cores=2) == 1  # more trials than cores time-share, one thread each
    cfg = load_config(None, ["pretrain.num_threads=0"])
    assert with_threads(cfg, "pretrain", 4) == ["pretrain.num_threads=4"]
    cfg = load_config(None, ["pretrain.num_threads=1"])  # a smaller explicit cap is kept
    assert with_threads(cfg, "pretrain", 4) == ["pretrain.num_threads=1"]


@pytest.mark.slow
def test_two_trials_run_at_once_and_the_study_completes(tmp_path, blank_store_db, monkeypatch):
    shutil.copyfile(blank_store_db, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    data = write_synthetic_tokenized(tmp_path / "tok", n_blocks={"train": 64, "validation": 8})
    cfg = load_config(
        None,
        [
            *MICRO,
            f"tracking.artifact_location={tmp_path / 'a'}",
            f"sweep.space={json.dumps(SPACE)}",
            "sweep.n_trials=2",
            "sweep.parallelism=2",
            "sweep.pruning=false",
        ],
    )
    out = tmp_path / "out"
    result = sweep(cfg, out, StepInputs(tokenized=data))
    assert (result.complete, result.ran_now) == (2, 2)

    study = optuna.load_study(study_name="lmforge-sweep", storage=f"sqlite:///{out / 'optuna.db'}")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2
    assert len({t.params["pretrain.lr"] for t in trials}) == 2  # workers drew different points
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 2  # two worker processes
    # The two overlapped: the second started before the first had finished.
    (_, first_end), (second_start, _) = sorted(
        (t.datetime_start, t.datetime_complete) for t in trials
    )
    assert second_start < first_end
    # Each trial trained on its share of the cores, and is a nested run of the one parent.
    client = mlflow.MlflowClient()
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`mlflow.parentRunId` = '{result.mlflow_parent_run_id}'",
    )
    assert sorted(int(r.data.tags["lmforge.sweep.trial"]) for r in runs) == [0, 1]
    threads = {r.data.params["pretrain.num_threads"] for r in runs}
    assert threads == {str(trial_threads(2))}
    assert (out / "best.yaml").exists() and len((out / "trials.csv").read_text().splitlines()) == 3
