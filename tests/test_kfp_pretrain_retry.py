"""A retried KFP pretrain step adopts its PyTorchJob and keeps the job's staged data and
checkpoints on the shared volume, against the recorded API server (``k8s_fake``).

The job's writes to the volume are played by the test (there is no training operator here):
it puts a checkpoint and ``metrics.json`` where the job's ``--out`` points.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from k8s_fake import JOBS, NAME, configmaps, recorded, routes
from k8s_fake import start as start_api

from lmforge.config import load_config
from lmforge.errors import LaunchError
from lmforge.kfp.runtime import pretrain_on_backend
from lmforge.train.result import PretrainResult

pytestmark = pytest.mark.timeout(60)
ADOPT = {("POST", JOBS): [recorded("job_already_exists.json")]}


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_PIPELINE_RUN_ID", "recorded")
    tokenized = tmp_path / "artifact-tokenized"
    (tokenized / "blocks").mkdir(parents=True)
    (tokenized / "blocks" / "meta.json").write_text('{"n_blocks": 8}')
    cfg = load_config(
        None,
        [f"launch.mount_path={tmp_path / 'volume'}", "launch.poll_s=0.01", "launch.api=pytorchjob"],
    )
    servers, cluster = [], [configmaps()]  # the params ConfigMaps outlive an attempt

    def attempt(job_reads, extra=None, out=None):
        server, api = start_api(routes(job_reads, extra), cluster)
        servers.append(server)
        target = out or tmp_path / f"artifact-pretrained-{len(servers)}"
        result = pretrain_on_backend(
            cfg, tokenized, target, "kubernetes", "recorded", api=api, echo=[].append
        )
        return server, result, target

    yield attempt, tmp_path / "volume" / "kfp" / "recorded", tokenized, servers
    for server in servers:
        server.shutdown()
        server.server_close()


def play_the_job(stage: Path, step: int, finished: bool = False) -> None:
    out = stage / "pretrain"
    (out / "checkpoints" / f"step-{step}").mkdir(parents=True, exist_ok=True)
    (out / "checkpoints" / f"step-{step}" / "manifest.json").write_text(json.dumps({"step": step}))
    if finished:
        values = dict.fromkeys(PretrainResult.field_names(), 1) | {"steps": step, "model_dir": "m"}
        (out / "metrics.json").write_text(json.dumps(values))


def test_a_retried_step_adopts_the_job_and_keeps_its_checkpoints(setup):
    attempt, stage, tokenized, servers = setup
    lost = {
        ("GET", f"{JOBS}/{NAME}"): [recorded("job_running.json"), recorded("job_unauthorized.json")]
    }

    # 1st attempt: creates the job, then loses the API (credentials refused) mid-run.
    with pytest.raises(LaunchError, match="HTTP 401"):
        attempt([], lost)
    play_the_job(stage, 20)
    assert (stage / "tokenized" / "blocks" / "meta.json").exists()
    assert (stage / "pretrain" / "checkpoints" / "step-20" / "manifest.json").exists()

    # 2nd attempt, same run id: 409 -> adopts the running job; its data and checkpoints stay.
    (tokenized / "blocks" / "meta.json").write_text('{"n_blocks": 9}')  # must not be re-staged
    with pytest.raises(LaunchError, match="HTTP 401"):
        attempt([], ADOPT | lost)
    play_the_job(stage, 40)
    assert json.loads((stage / "tokenized" / "blocks" / "meta.json").read_text())["n_blocks"] == 8
    assert {p.name for p in (stage / "pretrain" / "checkpoints").iterdir()} == {
        "step-20",
        "step-40",
    }

    # 3rd attempt: the job has succeeded meanwhile: its output is collected, then cleaned up.
    play_the_job(stage, 60, finished=True)
    server, result, out = attempt(["succeeded"], ADOPT)
    assert result.adopted is True and result.steps == 60
    assert (out / "metrics.json").exists()
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"step-20", "step-40", "step-60"}
    assert not stage.exists()  # success collected: nothing of this run needs the staging any more
    assert len(server.called("POST", JOBS)) == 1  # asked once, told 409, adopted
    first, second, _ = servers
    assert not first.called("DELETE") and not second.called("DELETE")  # the job ran on


def test_the_job_reads_and_writes_the_staging_of_its_run(setup):
    attempt, stage, _, _ = setup
    play_the_job(stage, 20, finished=True)
    server, result, out = attempt(["running", "succeeded"])
    (post,) = server.called("POST", JOBS)
    args = post[3]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "args"
    ]
    assert args[args.index("--data") + 1] == str(stage / "tokenized")
    assert args[args.index("--out") + 1] == str(stage / "pretrain")
    assert result.adopted is False and (out / "checkpoints" / "step-20").is_dir()
