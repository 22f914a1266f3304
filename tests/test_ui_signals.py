"""``lmforge ui`` ends with everything it started: told to stop (SIGTERM from a supervisor,
Ctrl-C at a terminal), it stops ``mlflow server`` with its uvicorn workers and job runner, the
port is free again, and no temporary folder is left."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from mlflow_fixtures import free_port
from process_fixtures import still_running_after

LMFORGE = str(Path(sys.executable).parent / "lmforge")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_ui_stops_its_server_and_workers(stop, embedded_store, tmp_path):
    port = free_port()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TMPDIR": str(scratch),
    }
    out = (tmp_path / "ui.log").open("w")
    artifacts = f"tracking.artifact_location={tmp_path / 'mlartifacts'}"
    proc = subprocess.Popen(
        [LMFORGE, "ui", "--port", str(port), "--set", artifacts],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        # As from a terminal: a background job's children start with SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not _answers(url):
            assert proc.poll() is None, (tmp_path / "ui.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "the UI did not answer within 180 s"
            time.sleep(0.2)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children  # mlflow server and its workers
        proc.send_signal(stop)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
    assert code == 0, (tmp_path / "ui.log").read_text()[-4000:]
    assert still_running_after(children, 5) == []
    assert _port_free(port)
    # No folder; a file may stay: MLflow's db_init_lock-* (filelock keeps its file after any run).
    assert [p.name for p in scratch.iterdir() if p.is_dir()] == []
