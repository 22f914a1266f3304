"""lmforge serve: a real MLflow scoring server on a free loopback port answers the model's own
logged input example, and stops cleanly, in bounded time, whenever it is told to: nothing of it
(process, port, downloaded folder) is left behind. The curl it prints is safe to paste."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest
from process_fixtures import still_running_after
from serve_fixtures import *  # noqa: F403  (fixtures listed in its __all__)

from lmforge.errors import RegistryError
from lmforge.serve.server import Running, start

LMFORGE = str(Path(sys.executable).parent / "lmforge")


def _refused(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/ping", timeout=2)
    except OSError:
        return True
    return False


@pytest.mark.slow
def test_the_lm_answers_its_logged_example_with_generated_text(registry):
    cfg = registry
    running = start(cfg, cfg.register.lm_model_name)
    try:
        assert running.model == f"models:/{cfg.register.lm_model_name}/1"
        assert running.url.startswith("http://127.0.0.1:")
        assert running.example["inputs"] == list(cfg.evaluate.sample_prompts[:1])
        (text,) = running.invoke(running.example)["predictions"]
        assert isinstance(text, str) and text.startswith(cfg.evaluate.sample_prompts[0])
    finally:
        code = running.stop()
    assert code is not None and _refused(running.url)
    assert not running.folder.exists()  # the downloaded copy goes with the server


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_cli_serves_the_classifier_until_interrupted(registry, tmp_path, stop):
    """Ctrl-C at a terminal, SIGTERM from Kubernetes or a supervisor: both stop the model
    server and its workers, and the CLI exits 0."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONFAULTHANDLER": "1",  # SIGABRT dumps every thread's stack: where a stop hangs
    }
    stderr = (tmp_path / "stderr.log").open("w")  # a file: a full pipe cannot block the CLI
    proc = subprocess.Popen(
        [LMFORGE, "serve", "--model", registry.register.classifier_model_name],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
        # As from a terminal: a runner started as a background job has SIGINT ignored, and an
        # ignored SIGINT stays ignored across exec (Python then installs no Ctrl-C handler).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        banner = proc.stdout.readline()  # blocks until the server answers /ping (bounded)
        curl = proc.stdout.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+) ", banner)[1]
        argv = shlex.split(curl)
        body = json.loads(argv[argv.index("-d") + 1])
        assert body["inputs"]  # the classifier's logged example
        request = urllib.request.Request(
            f"{url}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            (prediction,) = json.loads(resp.read())["predictions"]
        assert prediction["label"] in {"ham", "spam"}
        proc.send_signal(stop)
        try:
            code = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.wait(timeout=30)
            code = None
        assert code == 0, (tmp_path / "stderr.log").read_text()[-6000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr.close()
    assert "stopped" in proc.stdout.read() and _refused(url)


def test_an_unknown_alias_is_refused_before_anything_starts(registry):
    with pytest.raises(RegistryError, match="has no alias 'staging'"):
        start(registry, registry.register.classifier_model_name, "staging")


# The printed command run by bash with a curl that prints its -d argument instead of sending it.
FAKE_CURL = 'curl() { while [ $# -gt 0 ]; do [ "$1" = -d ] && printf %s "$2"; shift; done; }\n'


@pytest.mark.parametrize(
    "text",
    ["It's free, claim now", "'; touch {marker}; '", '$(touch {marker}) `touch {marker}` "\\"'],
    ids=["apostrophe", "quote-injection", "substitutions"],
)
def test_the_printed_curl_sends_exactly_the_example_and_runs_nothing(text, tmp_path):
    """The example comes from the registry: pasted into a shell, it must stay one argument."""
    marker = tmp_path / "pwned"
    example = {"inputs": [text.format(marker=marker)]}
    running = Running("http://127.0.0.1:1", "models:/m/1", example, None, tmp_path, tmp_path)
    command = running.curl()
    assert subprocess.run(["bash", "-n", "-c", command]).returncode == 0
    argv = shlex.split(command)
    assert json.loads(argv[argv.index("-d") + 1]) == example
    sent = subprocess.run(["bash", "-c", FAKE_CURL + command], capture_output=True, text=True)
    assert json.loads(sent.stdout) == example
    assert not marker.exists()


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
def test_sigterm_while_waiting_for_the_server_leaves_nothing_behind(registry, tmp_path):
    """SIGTERM before the server answered (here: as soon as it was started, while lmforge
    waits for /ping) stops the server and its workers, frees the port and removes the
    downloaded folder; lmforge exits 0."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TMPDIR": str(scratch),  # where lmforge puts the download, to look for leftovers
    }
    out = (tmp_path / "out.log").open("w")
    proc = subprocess.Popen(
        [LMFORGE, "serve", "--model", registry.register.classifier_model_name],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        server = _wait_for_child(proc, ("models", "serve"))
        port = int(server.cmdline()[server.cmdline().index("-p") + 1])
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
    log = (tmp_path / "out.log").read_text()
    assert "Serving" not in log, "the server answered before the signal: not the readiness wait"
    assert code == 0, log[-4000:]
    assert "stopped before" in log
    assert still_running_after(children, 5) == []
    assert _port_free(port)
    assert list(scratch.iterdir()) == []


def _wait_for_child(proc: subprocess.Popen, words: tuple[str, ...], seconds: float = 300):
    """The first descendant of ``proc`` whose command line has all ``words``."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited {proc.returncode} before starting {words}"
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if all(w in child.cmdline() for w in words):
                    return child
            except psutil.Error:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no {words} process within {seconds} s")
