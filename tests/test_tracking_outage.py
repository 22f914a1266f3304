"""A tracking outage never costs a training run: real ``mlflow server`` processes stopped and
started around a micro pretrain (inline, one process); the strict mode fails fast; a pod with no
tracking URI is an error, never a file that vanishes with the pod."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mlflow_fixtures import free_port, start_server
from test_train import MICRO

from lmforge import tracking
from lmforge.config import load_config
from lmforge.errors import ConfigError
from lmforge.train.pretrain import pretrain
from lmforge.train.synthetic import write_synthetic_tokenized
from lmforge.train.tracker import BUFFER_FILE

pytestmark = pytest.mark.timeout(300)  # bounded: a hang here is the bug under test


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory) -> Path:
    return write_synthetic_tokenized(tmp_path_factory.mktemp("data") / "tokenized")


@pytest.fixture
def single_process(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("LMFORGE_PIPELINE_RUN_ID", f"outage-{time.monotonic_ns()}")


class Server:
    """``mlflow server`` on a fixed port and sqlite store, so it can be killed and come back."""

    def __init__(self, root: Path, blank_db: Path):
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        shutil.copyfile(blank_db, root / "mlflow.db")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        store = f"sqlite:///{self.root / 'mlflow.db'}"
        log = self.root / "server.log"
        self.proc, _ = start_server(store, self.root / "artifacts", log, port=self.port)

    def kill(self) -> None:
        """An abrupt outage: the whole process group at once, no graceful drain."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def client(self, via_server: bool = False):
        """The store itself (readable while the server is down), or the server (artifacts)."""
        import mlflow

        uri = self.url if via_server else f"sqlite:///{self.root / 'mlflow.db'}"
        return mlflow.MlflowClient(tracking_uri=uri)

    def stage_run(self, stage: str = "pretrain"):
        client = self.client()
        exp = client.get_experiment_by_name("lmforge")
        if exp is None:
            return None
        found = client.search_runs([exp.experiment_id], f"tags.`lmforge.stage` = '{stage}'")
        return found[0] if found else None


@pytest.fixture
def server(tmp_path, blank_store_db):
    root = tmp_path / "server"
    root.mkdir()
    srv = Server(root, blank_store_db)
    yield srv
    srv.kill()


def micro(uri_root: Path, *extra: str):
    return load_config(
        None,
        [
            *MICRO,
            "tracking.request_timeout_s=2",
            "tracking.max_retries=1",
            f"tracking.artifact_location={uri_root / 'mlartifacts'}",
            *extra,
        ],
    )


def assert_fully_logged(srv: Server, out: Path) -> None:
    run = srv.stage_run()
    assert run is not None and run.info.status == "FINISHED"
    client = srv.client(via_server=True)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    csv_steps = [
        int(line.split(",")[0]) for line in (out / "plots" / "loss.csv").read_text().split()[1:]
    ]
    assert sorted(set(steps)) == csv_steps  # every logged step reached MLflow
    assert "unigram_perplexity" in run.data.metrics and "n_params" in run.data.params
    # The model: a LoggedModel of this run (created on replay when the outage held it back).
    (model,) = client.search_logged_models(
        [run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = 'language_model'",
    )
    files = {Path(a.path).name for a in client.list_logged_model_artifacts(model.model_id, "model")}
    assert {"config.json", "model.safetensors"} <= files
    assert "val_loss" in {m.key for m in model.metrics}
    parent = client.get_run(run.data.tags[tracking.PARENT_RUN_TAG])
    assert parent.data.tags[tracking.STAGE_TAG] == "pipeline"


@pytest.mark.slow
def test_server_killed_mid_training_then_replayed(
    tokenized, tmp_path, server, single_process, monkeypatch
):
    server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    # Long enough (a few seconds) that the outage starts while training still runs.
    cfg = micro(
        tmp_path, "pretrain.max_steps=400", "pretrain.eval_every=200", "pretrain.ckpt_every=200"
    )
    out = tmp_path / "pretrain"

    killed = threading.Event()

    def kill_after_first_metrics():  # the outage starts once training is under way
        while not killed.is_set():
            run = server.stage_run()
            if run is not None and "train_loss" in run.data.metrics:
                server.kill()
                killed.set()
            time.sleep(0.1)

    watcher = threading.Thread(target=kill_after_first_metrics, daemon=True)
    watcher.start()
    try:
        result = pretrain(cfg, tokenized, out)
    finally:
        killed.set()
        watcher.join()

    # The run finished and wrote its outputs; the summary says what MLflow did not get.
    assert result.steps == 400 and (out / "model" / "model.safetensors").is_file()
    summary = json.loads((out / "metrics.json").read_text())["tracking"]
    assert summary["run_id"], "the run was created before the outage"
    assert summary["unsent"] > 0, "the server must have died before training ended"
    assert summary["unsent_by_kind"]["end"] == 1 and summary["unsent_by_kind"]["artifact"] >= 1
    assert Path(summary["buffer"]) == out / BUFFER_FILE and (out / BUFFER_FILE).is_file()
    assert server.stage_run().info.status == "RUNNING"  # as the outage left it

    server.start()  # same port, same backend store
    replayed = tracking.replay(cfg, out)
    assert replayed["unsent"] == 0 and replayed["sent"] == summary["unsent"]
    assert replayed["rejected"] == [] and not (out / BUFFER_FILE).exists()
    assert_fully_logged(server, out)


@pytest.mark.slow
def test_unreachable_server_at_start_still_trains(
    tokenized, tmp_path, server, single_process, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)  # nothing listens there yet
    cfg = micro(tmp_path, "pretrain.max_steps=20", "pretrain.eval_every=20")
    out = tmp_path / "pretrain"
    result = pretrain(cfg, tokenized, out)
    assert result.steps == 20 and (out / "model" / "config.json").is_file()
    summary = json.loads((out / "metrics.json").read_text())["tracking"]
    assert summary["run_id"] is None and summary["sent"] == 0
    assert summary["unsent_by_kind"]["start"] == 1 and summary["unsent_by_kind"]["metrics"] >= 4
    # Still down: a replay keeps everything buffered and says so.
    assert tracking.replay(cfg, out)["unsent"] == summary["unsent"]

    server.start()
    replayed = tracking.replay(cfg, out)  # the run is created now, with the recorded start time
    assert replayed["unsent"] == 0 and replayed["run_id"]
    assert_fully_logged(server, out)
    assert tracking.replay(cfg, out)["sent"] == 0  # nothing left: replaying again is a no-op


def test_pod_without_tracking_uri_is_one_line_naming_the_secret(
    tokenized, tmp_path, single_process, monkeypatch
):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = micro(tmp_path)
    with pytest.raises(ConfigError) as err:
        pretrain(cfg, tokenized, tmp_path / "out")
    message = str(err.value)
    assert "\n" not in message
    assert "lmforge-mlflow" in message and "MLFLOW_TRACKING_URI" in message
    assert "kubectl" in message  # the fix
    assert not (tmp_path / "out").exists()  # refused before anything was written
    # A URI from the secret (or params) is accepted.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.lmforge:5000")
    assert tracking.tracking_uri(cfg) == "http://mlflow.lmforge:5000"


@pytest.fixture
def silent_port():
    """A port that accepts connections and never answers: a hung server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.mark.parametrize("kind", ["refused", "hung"])
def test_strict_client_fails_fast_naming_the_uri(kind, silent_port, monkeypatch):
    port = silent_port if kind == "hung" else free_port()
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = load_config(None, ["tracking.connect_timeout_s=1.5"])
    with pytest.raises(tracking.TrackingUnavailable) as err:
        tracking.client(cfg)
    message = str(err.value)
    assert uri in message and "\n" not in message and "1.5 s" in message
    with pytest.raises(tracking.TrackingUnavailable):  # and so does a stage that needs it
        tracking.stage_run(cfg, "register").__enter__()
