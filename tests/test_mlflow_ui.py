"""The MLflow UI over the project's store, in headless Chromium: the champion is visible.

MLflow's UI is a single-page app: Chromium gets a virtual time budget so the page has fetched
the registry and rendered before the DOM is dumped and the screenshot taken. The screenshot is
kept under ``tests/artifacts/`` (git-ignored) for people to look at.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow_fixtures import free_port, stop_server, wait_healthy

from lmforge import lineage, tracking
from lmforge.registry import promote, register

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The alias chip MLflow renders on a model version row: "@ champion".
ALIAS_CHIP = r"<span[^>]*>@(?:&nbsp;|\s|\u00a0){alias}</span>"


def chromium(url: str, profile: Path, *mode: str) -> str:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=20000",
        "--window-size=1400,900",
        *mode,
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian package chromium not installed (.ci/run installs it)"
)
def test_ui_shows_the_registered_model_with_its_champion(embedded_store, trained_stages, tmp_path):
    cfg = embedded_store
    stages = trained_stages
    register(cfg, stages["pretrain"], stages["finetune"], stages["evaluate"], tmp_path / "reg")
    name = cfg.register.classifier_model_name
    promote(cfg, name)
    client = tracking.client(cfg)
    model = client.get_logged_model(lineage.version_model_id(client.get_model_version(name, "1")))

    port = free_port()
    # What `lmforge ui` runs, over the same store the pipeline wrote.
    proc = subprocess.Popen(
        tracking.ui_command(cfg, port=port),
        stdout=(tmp_path / "ui.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        page = f"{url}/#/models/{name}"
        dom = chromium(page, tmp_path / "profile-dom", "--dump-dom")
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "mlflow_ui_champion.png"
        shot.unlink(missing_ok=True)
        chromium(page, tmp_path / "profile-shot", f"--screenshot={shot}")
        # The classifier's own page: its metrics, not the language model's (issue 31).
        model_page = f"{url}/#/experiments/{model.experiment_id}/models/{model.model_id}"
        model_dom = chromium(model_page, tmp_path / "profile-model", "--dump-dom")
        (ARTIFACTS / "mlflow_ui_model.html").write_text(model_dom)  # for a person to read
    finally:
        stop_server(proc)
    assert name in dom
    assert re.search(ALIAS_CHIP.format(alias="champion"), dom), "no @champion alias on the page"
    assert re.search(ALIAS_CHIP.format(alias="challenger"), dom)
    assert "Version 1" in dom
    assert "test_macro_f1" in model_dom and "test_accuracy" in model_dom
    assert "perplexity" not in model_dom  # the LM's numbers stay on the LM's page
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
