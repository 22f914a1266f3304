"""Ctrl-C and SIGTERM stop ``lmforge sweep`` and ``lmforge sweep --scaling`` within 10 s.

Issue 27, finding 10: after SIGINT every queued trial still ran, and the trials stayed RUNNING in
Optuna and MLflow. Here the real CLI runs in a session of its own with trials that would train
for hours; once the first one is training (a sweep trial: has written a checkpoint, so it holds
its checkpoint lock), the signal comes. Then:
the exit code says which signal, no process of the session is left, no trial is RUNNING in Optuna
or MLflow, the parent run is KILLED, and no lock or temporary folder is left in the output.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest

from lmforge.train.synthetic import write_synthetic_tokenized

LONG = [  # a one-layer model, and more steps than any test waits for
    "model.n_layers=1",
    "model.d_model=32",
    "model.n_heads=2",
    "model.max_seq_len=32",
    "pretrain.max_steps=1000000",
    "pretrain.micro_batch_size=4",
    "pretrain.warmup_steps=1",
    "pretrain.log_every=50",
    "pretrain.eval_every=0",
    "pretrain.eval_batches=1",
    "pretrain.ckpt_every=20",  # a trial holds its checkpoint lock and writes checkpoints
    "pretrain.precision=fp32",
    "pretrain.num_threads=1",
    "sweep.pruning=false",
]
SPACE = {"pretrain.lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2}}
LADDER = [  # rungs of 64M and 128M tokens: hours each
    'sweep.scaling_sizes=[{"n_layers": 1, "d_model": 16, "n_heads": 2}, '
    '{"n_layers": 1, "d_model": 32, "n_heads": 2}, {"n_layers": 2, "d_model": 32, "n_heads": 2}]',
    "sweep.scaling_tokens=[64000000, 128000000]",
]


def session_processes(sid: int) -> list[int]:
    """Every process of session ``sid`` (the CLI started one of its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    found.append(int(entry.name))
            except ProcessLookupError:
                continue
    return found


def wait_until(predicate, proc: subprocess.Popen, log: Path, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} early: {log.read_text()[-3000:]}")
        assert time.monotonic() < deadline, "the first trial did not start training"
        time.sleep(0.2)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background job starts with it ignored


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "sig", "parallelism"),
    [
        pytest.param("sweep", signal.SIGINT, 1, id="inline-trials-ctrl-c"),
        pytest.param("sweep", signal.SIGTERM, 2, id="worker-trials-sigterm"),
        pytest.param("scaling", signal.SIGINT, 2, id="scaling-rungs-ctrl-c"),
    ],
)
def test_a_signal_stops_the_sweep_and_leaves_nothing_running(
    tmp_path, blank_store_db, mode, sig, parallelism
):
    shutil.copyfile(blank_store_db, tmp_path / "mlflow.db")
    data = write_synthetic_tokenized(tmp_path / "tok", n_blocks={"train": 64, "validation": 8})
    out = tmp_path / "out"
    settings = [
        *LONG,
        f"tracking.artifact_location={tmp_path / 'a'}",
        f"sweep.parallelism={parallelism}",
        *(
            LADDER
            if mode == "scaling"
            else [f"sweep.space={json.dumps(SPACE)}", "sweep.n_trials=4"]
        ),
    ]
    cmd = [
        sys.executable,
        "-m",
        "lmforge.cli",
        "sweep",
        "--out",
        str(out),
        "--tokenized",
        str(data),
    ]
    cmd += ["--scaling"] if mode == "scaling" else []
    for item in settings:
        cmd += ["--set", item]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env |= {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "stderr.txt"  # a file: a full pipe (the progress bar) would block the CLI
    with log.open("w") as err:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )
    try:
        if mode == "scaling":  # a rung keeps no checkpoints: its progress bar says it trains
            wait_until(lambda: "train:" in log.read_text(errors="replace"), proc, log)
        else:  # a trial has written a checkpoint: it holds the checkpoint folder's lock
            wait_until(lambda: any(out.rglob("step-*")), proc, log)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # what a terminal's Ctrl-C does: the foreground group
        else:
            proc.send_signal(sig)  # what a supervisor does: the process it started
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stderr = log.read_text()
    assert proc.returncode == 128 + sig, stderr
    assert f"stopped by {signal.Signals(sig).name}" in stderr
    assert "Traceback" not in stderr

    deadline = time.monotonic() + 5  # the multiprocessing resource tracker reads EOF, then exits
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert session_processes(proc.pid) == []

    leftovers = [p for p in out.rglob("*") if p.name.endswith(".lock") or ".tmp-" in p.name]
    assert leftovers == []
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.status for r in parents] == ["KILLED"]
    if mode == "scaling":
        rungs = sorted((out / "scaling" / "rungs").glob("rung-*")) if out.exists() else []
        assert all((r / "rung.json").exists() for r in rungs)  # unfinished rungs are gone
        return
    study = optuna.load_study(study_name="lmforge-sweep", storage=f"sqlite:///{out / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and "COMPLETE" not in states
    stopped = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert stopped and all(t.state.name == "FAIL" for t in stopped)
    retries = [t for t in study.trials if t.state.name == "WAITING"]
    assert sorted(t.user_attrs["retry_of"] for t in retries) == [t.number for t in stopped]
    assert len(stopped) <= parallelism  # the queued trials never started
