"""``lmforge serve``: a registered model behind MLflow's own scoring server, on 127.0.0.1.

The alias is resolved once to a version; the version's files are downloaded and checked for
code from outside transformers (``lmforge.registry.loading``) before ``mlflow models serve``
(``--env-manager local``: this environment, nothing installed) loads that same folder, so what
is served is what was checked. The server listens on loopback only, on a free port unless one
is given; it is ready when ``/ping`` answers, and the request to send it is the model's own
logged input example (``serving_input_example.json``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.errors import RegistryError

HOST = "127.0.0.1"
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL: uvicorn drains in well under this
FALLBACK_EXAMPLE = {"inputs": ["Hello"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Running:
    url: str
    model: str  # models:/NAME/VERSION
    example: dict[str, Any]  # a request body the model accepts
    proc: subprocess.Popen
    folder: Path
    log: Path

    def curl(self) -> str:
        body = json.dumps(self.example)
        return f"curl -s {self.url}/invocations -H 'Content-Type: application/json' -d '{body}'"

    def invoke(self, body: dict[str, Any], timeout_s: float = 60.0) -> Any:
        request = urllib.request.Request(
            f"{self.url}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return json.loads(resp.read())

    def stop(self) -> int:
        """Stop the server and its workers (its own process group); its exit code.

        The group leader can exit before its worker has let go of the port (a worker still
        draining, or slow to get the signal on a loaded machine): the port is what a client
        sees, so the stop waits until it refuses and kills what is left of the group if not.
        """
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOP_GRACE_S)
        while self._answers() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.proc.poll() is None or self._answers():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            end = time.monotonic() + STOP_GRACE_S
            while self._answers() and time.monotonic() < end:
                time.sleep(0.2)
        shutil.rmtree(self.folder, ignore_errors=True)
        return self.proc.returncode

    def _answers(self) -> bool:
        """Whether something still accepts connections on the server's port."""
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        with socket.socket() as s:
            s.settimeout(1.0)
            return s.connect_ex((host, int(port))) == 0


def _example(root: Path) -> dict[str, Any]:
    path = root / "serving_input_example.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return dict(FALLBACK_EXAMPLE)


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:].strip()
            raise RegistryError(
                f"mlflow models serve for {what} exited with code {proc.returncode} before "
                f"answering; its log ends:\n{tail}"
            )
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.5)
    raise RegistryError(
        f"mlflow models serve for {what} did not answer {url}/ping within {timeout_s:.0f}s "
        f"(serve.start_timeout_s); its log: {log}"
    )


def start(cfg: Config, name: str, alias: str | None = None, port: int = 0) -> Running:
    """Resolve ``name@alias`` (default: the champion), check and download it, serve it."""
    import mlflow

    from lmforge import tracking
    from lmforge.registry.loading import check_no_remote_code
    from lmforge.serve.generate import resolve_version

    alias = alias or cfg.register.champion_alias
    client, mv = resolve_version(cfg, name, alias, None)
    what = f"models:/{mv.name}/{mv.version}"
    folder = Path(tempfile.mkdtemp(prefix="lmforge-serve-"))
    try:
        (folder / "model").mkdir()
        root = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=what, dst_path=str(folder / "model"), tracking_uri=client.tracking_uri
            )
        )
        check_no_remote_code(root, what)
        port = port or free_port()
        log = folder / "server.log"
        cmd = [
            sys.executable, "-m", "mlflow", "models", "serve",
            "-m", str(root), "--env-manager", "local",
            "-h", HOST, "-p", str(port), "--workers", "1",
        ]  # fmt: skip
        bin_dir = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "MLFLOW_TRACKING_URI": tracking.tracking_uri(cfg),
            "HF_HUB_OFFLINE": "1",
        }
        with log.open("ab") as out:  # its own group: the workers stop with it
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    running = Running(f"http://{HOST}:{port}", what, _example(root), proc, folder, log)
    try:
        _wait_ready(running.url, proc, log, cfg.serve.start_timeout_s, what)
    except BaseException:
        running.stop()
        raise
    return running


def serve(
    cfg: Config,
    name: str,
    alias: str | None = None,
    port: int = 0,
    echo: Callable[[str], None] = print,
) -> int:
    """Serve until interrupted (Ctrl-C, or SIGTERM: how Kubernetes and most supervisors stop a
    process) or the server exits; its exit code (0 when stopped). Either signal stops the
    server's whole process group before returning; none of it is left running."""
    running = start(cfg, name, alias, port)
    echo(f"Serving {running.model} at {running.url} (Ctrl-C stops it). Try:\n{running.curl()}")
    with _sigterm_as_interrupt():
        try:
            code = running.proc.wait()
        except KeyboardInterrupt:
            running.stop()
            echo(f"stopped {running.model}")
            return 0
    running.stop()
    return code


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt while serving (the default would end Python at once and
    leave the model server's processes behind); signals can only be set in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
