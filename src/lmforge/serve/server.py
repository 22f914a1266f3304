"""``lmforge serve``: a registered model behind MLflow's own scoring server, on 127.0.0.1.

The alias is resolved once to a version; the version's files are downloaded into a private
folder and checked (``lmforge.registry.loading``: nothing in it may run code). The registry's
MLmodel is then replaced by one lmforge writes, with only the checked transformers flavour and a
``python_function`` flavour whose loader is ``mlflow.transformers`` (no code paths): that file is
what ``mlflow models serve`` (``--env-manager local``: this environment, nothing installed)
loads, so the registry never decides what it imports. The server listens on loopback only, on a
free port unless one is given; it is ready when ``/ping`` answers, and the request to send it is
the model's own logged input example (``serving_input_example.json``).

SIGTERM and SIGHUP are handled as Ctrl-C from the start, download and readiness wait included:
the server runs in its own process group and is stopped with everything it started
(``lmforge.children``), and the downloaded folder is removed.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.children import (
    signals_deferred,
    signals_ignored,
    signals_interrupt,
    start_group,
    stop_group,
)
from lmforge.config import Config
from lmforge.errors import RegistryError
from lmforge.registry.loading import MLMODEL, PYFUNC_LOADER, CheckedModel, download_checked

HOST = "127.0.0.1"
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
        """A shell command that sends the example. The body comes from the registry, so it is
        quoted for the shell: a quote in it can neither end the argument nor run anything."""
        body = json.dumps(self.example)
        return (
            f"curl -s {self.url}/invocations -H 'Content-Type: application/json' "
            f"-d {shlex.quote(body)}"
        )

    def invoke(self, body: dict[str, Any], timeout_s: float = 60.0) -> Any:
        request = urllib.request.Request(
            f"{self.url}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return json.loads(resp.read())

    def stop(self) -> int:
        """Stop the server, its workers and whatever they started (SIGTERM, then SIGKILL),
        remove the downloaded copy; the server's exit code."""
        with signals_ignored():  # a second Ctrl-C must not cut the clean-up short
            code = stop_group(self.proc)
            shutil.rmtree(self.folder, ignore_errors=True)
        return code


def _example(root: Path) -> dict[str, Any]:
    path = root / "serving_input_example.json"
    try:
        example = json.loads(path.read_text())
    except (OSError, ValueError):
        return dict(FALLBACK_EXAMPLE)
    return example if isinstance(example, dict) else dict(FALLBACK_EXAMPLE)


def served_mlmodel(checked: CheckedModel) -> dict[str, Any]:
    """The MLmodel a checked model is served with: its checked transformers flavour, a
    ``python_function`` flavour lmforge writes, and the registry's signature (data)."""
    kept = ("signature", "saved_input_example_info", "mlflow_version")
    return {
        "flavors": {
            "python_function": {
                "loader_module": PYFUNC_LOADER,
                "python_version": ".".join(map(str, sys.version_info[:3])),
            },
            "transformers": {**checked.flavor, "code": None},
        },
        **{k: checked.mlmodel[k] for k in kept if isinstance(checked.mlmodel.get(k), dict | str)},
    }


def _download_checked(cfg: Config, name: str, alias: str, folder: Path) -> CheckedModel:
    """The version under ``alias``, downloaded into ``folder`` and checked; its MLmodel
    replaced by :func:`served_mlmodel`."""
    import yaml

    from lmforge.serve.generate import resolve_version

    client, mv = resolve_version(cfg, name, alias, None)
    checked = download_checked(client, mv.name, str(mv.version), folder)
    (checked.root / MLMODEL).write_text(yaml.safe_dump(served_mlmodel(checked), sort_keys=False))
    return checked


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


def _command(root: Path, port: int) -> list[str]:
    return [
        sys.executable, "-m", "mlflow", "models", "serve",
        "-m", str(root), "--env-manager", "local",
        "-h", HOST, "-p", str(port), "--workers", "1",
    ]  # fmt: skip


def start(cfg: Config, name: str, alias: str | None = None, port: int = 0) -> Running:
    """Resolve ``name@alias`` (default: the champion), download and check it, serve it.

    Whatever ends this before the server answers (an error, Ctrl-C, or SIGTERM inside
    :func:`lmforge.children.signals_interrupt`), the server's processes and the downloaded
    folder are gone when it raises.
    """
    from lmforge import tracking

    alias = alias or cfg.register.champion_alias
    folder = running = None
    try:
        with signals_deferred():  # made and recorded, or neither: the except below removes it
            folder = Path(tempfile.mkdtemp(prefix="lmforge-serve-"))
        (folder / "model").mkdir()
        checked = _download_checked(cfg, name, alias, folder / "model")
        log = folder / "server.log"
        url = f"http://{HOST}:{port or free_port()}"
        env = {
            **os.environ,
            "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
            "MLFLOW_TRACKING_URI": tracking.tracking_uri(cfg),
            "HF_HUB_OFFLINE": "1",
        }
        cmd = _command(checked.root, int(url.rsplit(":", 1)[1]))
        with log.open("ab") as out, signals_deferred():  # started and recorded, or neither
            proc = start_group(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            running = Running(url, checked.what, _example(checked.root), proc, folder, log)
        _wait_ready(url, proc, log, cfg.serve.start_timeout_s, checked.what)
    except BaseException:
        if running is not None:
            running.stop()
        if folder is not None:
            with signals_ignored():
                shutil.rmtree(folder, ignore_errors=True)
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
    process) or the server exits; its exit code (0 when stopped). A signal at any point, the
    download and the readiness wait included, stops the server's processes and removes its
    folder before this returns: none of it is left behind."""
    with signals_interrupt():
        try:
            running = start(cfg, name, alias, port)
        except KeyboardInterrupt:
            echo(f"stopped before {name} was served")
            return 0
        interrupted = False
        try:
            echo(
                f"Serving {running.model} at {running.url} (Ctrl-C stops it). Try:\n"
                f"{running.curl()}"
            )
            code = running.proc.wait()
        except KeyboardInterrupt:
            code, interrupted = 0, True
        finally:
            running.stop()
    if interrupted:
        echo(f"stopped {running.model}")
    return code
