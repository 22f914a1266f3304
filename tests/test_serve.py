"""lmforge serve: a real MLflow scoring server on a free loopback port answers the model's own
logged input example, and stops cleanly, in bounded time."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from serve_fixtures import *  # noqa: F403  (fixtures listed in its __all__)

from lmforge.errors import RegistryError
from lmforge.serve.server import start

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
        body = json.loads(re.search(r"-d '(.+)'$", curl.strip())[1])
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
