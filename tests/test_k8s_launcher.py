"""The launcher's Kubernetes side against recorded API responses (``k8s_fake``).

The real ``kubernetes`` client talks to a real HTTP server on 127.0.0.1; faults (5xx, 429 with
Retry-After, dropped connections, a log stream cut short) are recorded replies too.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import k8s_fake_trainjob
import pytest
from k8s_fake import (
    CORE,
    DROP,
    JOBS,
    NAME,
    RESPONSES,
    Reply,
    configmaps,
    recorded,
    routes,
    server_error,
)
from k8s_live import status

from lmforge.config import load_config
from lmforge.errors import LaunchError
from lmforge.launch import trainjob
from lmforge.launch.launcher import KubernetesPretrain, launch_pretrain
from lmforge.launch.pytorchjob import PARAMS_HASH_LABEL, params_configmap_name, render
from lmforge.train.result import PretrainResult

pytestmark = pytest.mark.timeout(60)
LOG = f"{CORE}/pods/{NAME}-master-0/log"
ADOPT = recorded("job_already_exists.json")


@pytest.fixture
def cfg(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no metrics.json of a real run in sight
    monkeypatch.setenv("LMFORGE_PIPELINE_RUN_ID", "recorded")
    return load_config(None, ["launch.api=pytorchjob", "launch.poll_s=0.01", "launch.timeout_s=30"])


def launch(cfg, api, lines):
    return launch_pretrain(
        cfg,
        Path("outputs/tokenized"),
        Path("outputs/pretrain"),
        backend="kubernetes",
        api=api,
        echo=lines.append,
    )


def states(lines):
    return [line.rsplit(": ", 1)[1] for line in lines if line.startswith("PyTorchJob ")]


def deletes_after_the_end(server) -> bool:
    """Every DELETE came after the last read of the job (the one that saw it end)."""
    calls = [(c[0], c[1]) for c in server.calls]
    last_get = max(i for i, c in enumerate(calls) if c == ("GET", f"{JOBS}/{NAME}"))
    return all(i > last_get for i, c in enumerate(calls) if c[0] == "DELETE")


def test_created_running_succeeded(api_server, cfg):
    server, api = api_server(routes(["pending", "running", "running", "succeeded"]))
    lines: list[str] = []
    result = launch(cfg, api, lines)
    assert isinstance(result, PretrainResult) and isinstance(result, KubernetesPretrain)
    assert result.job == NAME and result.adopted is False
    assert result.val_loss == 6.1203 and result.steps == 20  # the master's printed result
    fields = [*PretrainResult.field_names(), "job", "adopted", "backend"]
    assert list(asdict(result)) == fields  # `lmforge pretrain`'s JSON, as before
    (post,) = server.called("POST", JOBS)
    configmap, job = render(cfg, Path("outputs/tokenized"), Path("outputs/pretrain"))
    assert post[3] == job  # the rendered job, as sent
    assert server.called("POST", f"{CORE}/configmaps")[0][3] == configmap
    assert states(lines) == ["Created", "Running", "Succeeded"]
    assert "[master-0] step 20 | loss 6.4410 | lr 6.7e-04" in lines  # the master's log stream
    (log_call,) = server.called("GET", LOG)
    assert log_call[2]["follow"][0].lower() == "true" and log_call[2]["container"] == ["pytorch"]
    assert server.called("DELETE", f"{JOBS}/{NAME}")
    assert server.called("DELETE", f"{CORE}/configmaps/{params_configmap_name(NAME)}")


def test_metrics_on_the_mounted_volume_are_the_result(api_server, cfg, tmp_path):
    out = tmp_path / "outputs" / "pretrain"
    out.mkdir(parents=True)
    values = dict.fromkeys(PretrainResult.field_names(), 1) | {"val_loss": 2.5, "model_dir": "m"}
    (out / "metrics.json").write_text(json.dumps(values))
    _, api = api_server(routes(["running", "succeeded"]))
    assert launch(cfg, api, []).val_loss == 2.5


def test_failed_job_reports_its_condition_and_pod_states(api_server, cfg):
    extra = {("GET", f"{CORE}/pods"): [recorded("pods_failed.json")]}
    server, api = api_server(routes(["running", "failed"], extra))
    with pytest.raises(LaunchError) as err:
        launch(cfg, api, [])
    message = str(err.value)
    assert "PyTorchJobFailed: PyTorchJob lmforge/" in message
    assert "1 Master replica(s) failed" in message
    assert f"pod {NAME}-master-0 (3 restarts): terminated: OOMKilled (exit code 137)" in message
    assert f"pod {NAME}-worker-0 (3 restarts): last exit: Error (exit code 1)" in message
    (pods_call,) = server.called("GET", f"{CORE}/pods")
    assert pods_call[2]["labelSelector"] == [f"training.kubeflow.org/job-name={NAME}"]
    assert server.called("DELETE", f"{JOBS}/{NAME}")  # delete_on_finish covers failures too
    assert deletes_after_the_end(server)


def test_existing_job_is_adopted_not_duplicated(api_server, cfg):
    ours, _ = render(cfg, Path("outputs/tokenized"), Path("outputs/pretrain"))
    server, api = api_server(
        routes(["running", "running", "succeeded"], {("POST", JOBS): [ADOPT]}),
        [configmaps(ours)],  # the ConfigMap a first attempt made: the same params, kept
    )
    lines: list[str] = []
    result = launch(cfg, api, lines)
    assert result.adopted is True
    assert len(server.called("POST", JOBS)) == 1
    assert any("already exists (Running): adopting it" in line for line in lines)
    assert not any((c[3] or {}).get("preconditions") for c in server.called("DELETE"))  # kept


# Both job APIs: their recorded routes, the job's path, its "already exists" answer, render.
APIS = {
    "pytorchjob": (routes, JOBS, ADOPT, render),
    "trainjob": (
        k8s_fake_trainjob.routes,
        k8s_fake_trainjob.TRAINJOBS,
        k8s_fake_trainjob.tj("already_exists.json"),
        trainjob.render,
    ),
}
PARAMS_CM = f"{CORE}/configmaps/{params_configmap_name(NAME)}"
NO_JOB = Reply(404, json.dumps(status(404, "NotFound", f'"{NAME}" not found')[1]).encode())


def _left_behind(job_api: str, *settings: str):
    """The config of a launch with ``job_api``, and the ConfigMap an earlier launch of this run
    id with other params left: (cfg, ours, theirs)."""
    cfg = load_config(
        None, ["launch.poll_s=0.01", "launch.timeout_s=30", f"launch.api={job_api}", *settings]
    )
    ours, _ = APIS[job_api][3](cfg, Path("outputs/tokenized"), Path("outputs/pretrain"))
    theirs = json.loads(json.dumps(ours))
    theirs["data"] = {"params.yaml": "train:\n  lr: 0.5\n"}  # the earlier launch's params
    return cfg, ours, theirs


@pytest.mark.parametrize("job_api", list(APIS))
def test_a_params_configmap_left_by_a_partial_cleanup_is_replaced(api_server, cfg, job_api):
    """A cleanup deleted the job of this run id but not its ConfigMap, of other params: the new
    job must mount this launch's params, the ones its params-hash label names."""
    job_routes, jobs, _, _ = APIS[job_api]
    cfg, ours, theirs = _left_behind(job_api, "launch.delete_on_finish=false")
    cms = configmaps(theirs)
    server, api = api_server(job_routes(["running", "succeeded"]), [cms])
    server.routes[("GET", f"{jobs}/{NAME}")].insert(0, NO_JOB)  # no job mounts it
    lines: list[str] = []
    launch(cfg, api, lines)
    assert cms.objects[ours["metadata"]["name"]]["data"] == ours["data"]
    writes = [c for c in server.calls if c[0] != "GET"]
    assert [(c[0], c[1]) for c in writes] == [
        ("POST", f"{CORE}/configmaps"),  # 409
        ("DELETE", PARAMS_CM),
        ("POST", f"{CORE}/configmaps"),  # these params, before the job exists
        ("POST", jobs),
    ]
    assert writes[1][3]["preconditions"]["resourceVersion"]  # only the version it read
    assert any("held other params and no" in line and "replaced" in line for line in lines)


@pytest.mark.parametrize("job_api", list(APIS))
def test_a_params_configmap_of_a_live_job_of_other_params_is_refused(api_server, cfg, job_api):
    job_routes, jobs, _, _ = APIS[job_api]
    cfg, ours, theirs = _left_behind(job_api)
    cms = configmaps(theirs)
    server, api = api_server(job_routes(["running"]), [cms])
    with pytest.raises(LaunchError) as err:
        launch(cfg, api, [])
    message = str(err.value)
    assert f"ConfigMap lmforge/{NAME}-params holds other params" in message
    assert f"delete {job_api} {NAME} configmap {NAME}-params" in message
    assert "another run id" in message and "\n" not in message
    assert cms.objects[ours["metadata"]["name"]]["data"] == theirs["data"]
    assert not server.called("DELETE") and not server.called("POST", jobs)


def test_a_create_whose_answer_was_lost_adopts_the_job_it_made(api_server, cfg):
    # The POST reached the server but the connection dropped before the answer: the retry
    # is told 409, and the job is adopted instead of failing the step or duplicating it.
    extra = {("POST", JOBS): [DROP, recorded("job_already_exists.json")]}
    server, api = api_server(routes(["running", "succeeded"], extra))
    lines: list[str] = []
    assert launch(cfg, api, lines).adopted is True
    assert len(server.called("POST", JOBS)) == 2
    assert any("while trying to create the PyTorchJob; retrying" in line for line in lines)


def test_a_job_of_other_params_is_not_adopted(api_server, cfg):
    other = json.loads((RESPONSES / "job_running.json").read_text())
    other["metadata"]["labels"][PARAMS_HASH_LABEL] = "0123456789ab"
    extra = {("POST", JOBS): [recorded("job_already_exists.json")]}
    server, api = api_server(routes(["running"], extra))
    server.routes[("GET", f"{JOBS}/{NAME}")] = [Reply(200, json.dumps(other).encode())]
    with pytest.raises(LaunchError, match=r"created with other params.*another run id"):
        launch(cfg, api, [])
    assert not server.called("DELETE")


def test_api_errors_while_watching_neither_end_nor_delete_the_job(api_server, cfg):
    job_reads = [
        recorded("job_pending.json"),
        recorded("job_running.json"),
        server_error(500),
        server_error(503),
        server_error(429, headers={"Retry-After": "1"}),
        DROP,
        DROP,
        recorded("job_running.json"),
        recorded("job_succeeded.json"),
    ]
    log = recorded("master_log.txt")
    extra = {
        ("GET", f"{JOBS}/{NAME}"): job_reads,
        # the log stream is cut mid-way, then re-opened
        ("GET", LOG): [Reply(200, log.body, truncate=True), log],
    }
    server, api = api_server(routes([], extra))
    lines: list[str] = []
    result = launch(cfg, api, lines)
    assert result.job == NAME and result.val_loss == 6.1203
    assert states(lines) == ["Created", "Running", "Succeeded"]
    assert any("HTTP 500" in line and "retrying" in line for line in lines)
    assert any("HTTP 429" in line and "retrying in 1.0s" in line for line in lines)  # Retry-After
    assert any("RemoteDisconnected" in line or "ProtocolError" in line for line in lines)
    assert deletes_after_the_end(server)  # only the ended job is deleted
    # the log: every line once, the second stream asked from where the first one broke
    for text in ("step 10 | loss 7.9012", "step 20 | loss 6.4410"):
        assert sum(text in line for line in lines) == 1
    first, second = server.called("GET", LOG)[:2]
    assert "sinceSeconds" not in first[2] and int(second[2]["sinceSeconds"][0]) > 0
    assert second[2]["timestamps"][0].lower() == "true"


def test_a_failure_seen_through_api_errors_is_reported(api_server, cfg):
    extra = {
        ("GET", f"{JOBS}/{NAME}"): [
            recorded("job_running.json"),
            server_error(503),
            DROP,
            recorded("job_failed.json"),
        ],
        ("GET", f"{CORE}/pods"): [server_error(500), recorded("pods_failed.json")],
    }
    server, api = api_server(routes([], extra))
    with pytest.raises(LaunchError, match=r"PyTorchJobFailed.*\n.*OOMKilled"):
        launch(cfg, api, [])
    assert deletes_after_the_end(server)


def test_an_api_lost_past_the_deadline_keeps_the_job(api_server, cfg):
    cfg.launch.timeout_s = 1
    server, api = api_server(routes(["running"], {("GET", f"{JOBS}/{NAME}"): [server_error(503)]}))
    lines: list[str] = []
    with pytest.raises(LaunchError, match=r"could not read the PyTorchJob .*HTTP 503"):
        launch(cfg, api, lines)
    assert not server.called("DELETE")
    assert any(
        "was left as it is" in line and "kubectl -n lmforge delete" in line for line in lines
    )


def test_credentials_refused_mid_watch_keep_the_job(api_server, cfg):
    extra = {
        ("GET", f"{JOBS}/{NAME}"): [recorded("job_running.json"), recorded("job_unauthorized.json")]
    }
    server, api = api_server(routes([], extra))
    with pytest.raises(LaunchError, match=r"HTTP 401.*refresh the kubeconfig"):
        launch(cfg, api, [])
    assert not server.called("DELETE")


def test_an_interrupt_keeps_the_job(api_server, cfg):
    server, api = api_server(routes(["running"]))
    lines: list[str] = []

    def echo(line):
        lines.append(line)
        if line.endswith(": Running"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        launch_pretrain(
            cfg,
            Path("outputs/tokenized"),
            Path("outputs/pretrain"),
            backend="kubernetes",
            api=api,
            echo=echo,
        )
    assert not server.called("DELETE")
    assert any("a retried step with the same run id adopts it" in line for line in lines)


def test_timeout_raises_and_keeps_the_job(api_server, cfg):
    cfg.launch.timeout_s = 0
    server, api = api_server(routes(["running"]))
    with pytest.raises(
        LaunchError, match=r"did not finish within launch.timeout_s=0s \(still Running\)"
    ):
        launch(cfg, api, [])
    assert not server.called("DELETE")  # the job's activeDeadlineSeconds is the cluster's call


@pytest.mark.parametrize(
    ("route", "reply", "expected"),
    [
        (("POST", JOBS), "job_forbidden.json", r"HTTP 403.*k8s/base/rbac.yaml"),
        (
            ("POST", JOBS),
            "job_invalid.json",
            r"HTTP 422.*Master.replicas.*lmforge pretrain --render",
        ),
        (
            ("POST", f"{CORE}/configmaps"),
            "namespace_not_found.json",
            r"HTTP 404.*kubectl create namespace lmforge.*launch.namespace",
        ),
    ],
)
def test_refused_creates_name_the_object_and_the_fix(api_server, cfg, route, reply, expected):
    server, api = api_server(routes(["running"], {route: [recorded(reply)]}))
    with pytest.raises(LaunchError, match=expected) as err:
        launch(cfg, api, [])
    assert f"lmforge/{NAME}" in str(err.value)
    assert len(server.called(*route)) == 1  # a refusal is not retried
    assert not server.called("DELETE")
