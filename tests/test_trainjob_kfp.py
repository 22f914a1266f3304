"""KFP: the pretrain and full pipelines take ``launch_api``, and the pretrain step's Kubernetes
path stages the data, creates the TrainJob and collects its output (recorded API server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from k8s_fake import CORE, NAME
from k8s_fake import start as start_api
from k8s_fake_trainjob import TRAINJOBS, routes
from test_kfp_pretrain_retry import play_the_job

from lmforge.config import load_config
from lmforge.kfp.runtime import pretrain_on_backend
from lmforge.launch.launcher import KubernetesPretrain

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("pipeline", ["pretrain", "full"])
def test_compiled_pipelines_pass_launch_api_to_pretrain(pipeline):
    text = (REPO / "pipelines" / pipeline / "pipeline.yaml").read_text()
    spec = next(yaml.safe_load_all(text))  # the pipeline spec; then the platform spec
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["launch_api"]["defaultValue"] == load_config(REPO / "params.yaml").launch.api
    # The run form's field reaches the pretrain step as launch.api in its overrides.
    settings = spec["root"]["dag"]["tasks"]["settings"]["inputs"]["parameters"]
    assert settings["pipelinechannel--launch_api"] == {"componentInputParameter": "launch_api"}
    task = spec["root"]["dag"]["tasks"]["pretrain"]
    assert task["inputs"]["parameters"]["overrides"]["taskOutputParameter"]["producerTask"] == (
        "settings"
    )


@pytest.mark.timeout(60)
def test_kubernetes_step_runs_a_trainjob_and_collects_its_output(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_PIPELINE_RUN_ID", "recorded")
    tokenized = tmp_path / "artifact-tokenized"
    (tokenized / "blocks").mkdir(parents=True)
    (tokenized / "blocks" / "meta.json").write_text('{"n_blocks": 8}')
    volume = tmp_path / "volume"
    cfg = load_config(
        None, ["launch.api=trainjob", f"launch.mount_path={volume}", "launch.poll_s=0.01"]
    )
    stage = volume / "kfp" / "recorded"
    play_the_job(stage, 20, finished=True)  # what the nodes write to the shared volume
    server, api = start_api(routes(["running", "succeeded"]))
    try:
        out = tmp_path / "artifact-pretrained"
        result = pretrain_on_backend(cfg, tokenized, out, "kubernetes", "recorded", api=api)
    finally:
        server.shutdown()
        server.server_close()
    assert isinstance(result, KubernetesPretrain) and result.job == NAME and result.steps == 20
    (post,) = server.called("POST", TRAINJOBS)
    args = post[3]["spec"]["trainer"]["args"]
    assert args[args.index("--data") + 1] == str(stage / "tokenized")
    assert json.loads((out / "metrics.json").read_text())["steps"] == 20
    assert not stage.exists()  # collected: the staging folder goes
    assert server.called("DELETE", f"{TRAINJOBS}/{NAME}")
    assert server.called("POST", f"{CORE}/configmaps")
