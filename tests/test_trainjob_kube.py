"""The launcher's TrainJob side against recorded Kubeflow Trainer v2 responses (``k8s_fake``).

The real ``kubernetes`` client talks to the project's fake API server: create, adopt on 409,
watch to Complete or Failed, node 0's log (its pod found by the JobSet's labels), failures
explained from conditions, pod exit codes and events, cleanup per ``launch.delete_on_finish``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from k8s_fake import (
    CORE,
    NAME,
    RESPONSES,
    Reply,
    configmaps,
)
from k8s_fake_trainjob import NODE0, NODE0_FAILED, TRAINJOBS, routes, tj
from k8s_schema import REPO, errors, kustomize

from lmforge.config import load_config
from lmforge.errors import LaunchError
from lmforge.launch import trainjob
from lmforge.launch.launcher import KubernetesPretrain, launch_pretrain
from lmforge.launch.pytorchjob import PARAMS_HASH_LABEL, params_configmap_name

pytestmark = pytest.mark.timeout(60)
RECORDED = RESPONSES / "trainjob"


@pytest.fixture
def cfg(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LMFORGE_PIPELINE_RUN_ID", "recorded")
    return load_config(None, ["launch.api=trainjob", "launch.poll_s=0.01", "launch.timeout_s=30"])


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
    return [line.rsplit(": ", 1)[1] for line in lines if line.startswith("TrainJob lmforge/")]


@pytest.mark.parametrize(
    "name", [p.name for p in sorted(RECORDED.glob("*.json")) if "kind" in p.read_text()]
)
def test_recorded_trainjobs_are_v2_shaped(name):
    body = json.loads((RECORDED / name).read_text())
    if body["kind"] == "TrainJob":
        assert errors(body) == [], name  # status included: the v2.3.0 CRD's
    else:
        assert body["kind"] in ("Status", "PodList", "EventList")


def test_created_running_complete(api_server, cfg):
    server, api = api_server(routes(["pending", "running", "running", "succeeded"]))
    lines: list[str] = []
    result = launch(cfg, api, lines)
    assert isinstance(result, KubernetesPretrain) and result.adopted is False
    assert result.job == NAME and result.val_loss == 6.1203  # node 0's printed result
    (post,) = server.called("POST", TRAINJOBS)
    configmap, job = trainjob.render(cfg, Path("outputs/tokenized"), Path("outputs/pretrain"))
    assert post[3] == job and server.called("POST", f"{CORE}/configmaps")[0][3] == configmap
    assert states(lines) == ["Pending", "Running", "Complete"]
    assert "[node-0] step 20 | loss 6.4410 | lr 6.7e-04" in lines
    pod_lists = server.called("GET", f"{CORE}/pods")
    assert pod_lists[0][2]["labelSelector"] == [
        f"jobset.sigs.k8s.io/jobset-name={NAME},batch.kubernetes.io/job-completion-index=0"
    ]
    log_calls = server.called("GET", f"{CORE}/pods/{NODE0}/log")
    assert log_calls and all(c[2]["container"] == ["node"] for c in log_calls)
    assert server.called("DELETE", f"{TRAINJOBS}/{NAME}")
    assert server.called("DELETE", f"{CORE}/configmaps/{params_configmap_name(NAME)}")


def test_deadline_exceeded_is_reported_from_the_condition(api_server, cfg):
    server, api = api_server(routes(["running", "failed_deadline"]))
    with pytest.raises(LaunchError) as err:
        launch(cfg, api, [])
    message = str(err.value)
    assert f"TrainJob lmforge/{NAME} failed: DeadlineExceeded: TrainJob exceeded its" in message
    assert server.called("DELETE", f"{TRAINJOBS}/{NAME}")  # delete_on_finish: failures too


def test_oom_killed_nodes_are_named_with_the_events(api_server, cfg):
    extra = {("GET", f"{CORE}/pods"): [tj("pods_oomkilled.json")]}
    server, api = api_server(routes(["running", "failed_restarts"], extra))
    with pytest.raises(LaunchError) as err:
        launch(cfg, api, [])
    message = str(err.value)
    assert "failed: ReachedMaxRestarts: jobset failed due to reaching max number" in message
    assert f"pod {NODE0_FAILED} (0 restarts): terminated: OOMKilled (exit code 137)" in message
    assert "terminated: Error (exit code 1); torch.distributed.DistNetworkError" in message
    assert "event JobSet ReachedMaxRestarts: jobset failed due to reaching max" in message
    assert "Created JobSet" not in message  # Normal events are not failure reasons
    (events,) = server.called("GET", f"{CORE}/events")
    assert events[2]["fieldSelector"] == [f"involvedObject.name={NAME}"]
    explain = [
        c for c in server.called("GET", f"{CORE}/pods") if "," not in c[2]["labelSelector"][0]
    ]
    assert explain[-1][2]["labelSelector"] == [f"jobset.sigs.k8s.io/jobset-name={NAME}"]


def test_existing_trainjob_of_this_run_is_adopted(api_server, cfg):
    ours, _ = trainjob.render(cfg, Path("outputs/tokenized"), Path("outputs/pretrain"))
    extra = {("POST", TRAINJOBS): [tj("already_exists.json")]}
    server, api = api_server(routes(["running", "succeeded"], extra), [configmaps(ours)])
    lines: list[str] = []
    assert launch(cfg, api, lines).adopted is True
    assert len(server.called("POST", TRAINJOBS)) == 1
    assert any(
        "TrainJob lmforge/" in x and "already exists (Running): adopting" in x for x in lines
    )


def test_a_trainjob_of_other_params_is_not_adopted(api_server, cfg):
    other = json.loads((RECORDED / "running.json").read_text())
    other["metadata"]["labels"][PARAMS_HASH_LABEL] = "0123456789ab"
    server, api = api_server(
        routes(["running"], {("POST", TRAINJOBS): [tj("already_exists.json")]})
    )
    server.routes[("GET", f"{TRAINJOBS}/{NAME}")] = [Reply(200, json.dumps(other).encode())]
    with pytest.raises(LaunchError, match=r"created with other params.*delete trainjob"):
        launch(cfg, api, [])
    assert not server.called("DELETE")


def test_forbidden_create_names_the_role(api_server, cfg):
    server, api = api_server(routes(["running"], {("POST", TRAINJOBS): [tj("forbidden.json")]}))
    with pytest.raises(LaunchError, match=r"create the TrainJob lmforge/.*HTTP 403.*rbac.yaml"):
        launch(cfg, api, [])
    assert len(server.called("POST", TRAINJOBS)) == 1 and not server.called("DELETE")


def test_no_trainer_installed_says_so(api_server, cfg):
    missing = {
        "kind": "Status",
        "code": 404,
        "reason": "NotFound",
        "message": "the server could not find the requested resource (post trainjobs.trainer...)",
    }
    reply = Reply(404, json.dumps(missing).encode())
    _, api = api_server(routes(["running"], {("POST", TRAINJOBS): [reply]}))
    with pytest.raises(LaunchError, match=r"Kubeflow Trainer v2 .* installed"):
        launch(cfg, api, [])


def test_timeout_keeps_the_trainjob_and_says_how_to_inspect_it(api_server, cfg):
    cfg.launch.timeout_s = 0
    server, api = api_server(routes(["running"]))
    lines: list[str] = []
    with pytest.raises(LaunchError, match=r"did not finish .*describe trainjob"):
        launch(cfg, api, lines)
    assert not server.called("DELETE")
    assert any("kubectl -n lmforge delete trainjob" in line for line in lines)


def test_keep_on_finish_leaves_the_job(api_server, cfg):
    cfg.launch.delete_on_finish = False
    server, api = api_server(routes(["running", "succeeded"]))
    assert launch(cfg, api, []).val_loss == 6.1203
    assert not server.called("DELETE")


def _granted(calls) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of each API call the fake server saw."""
    used = set()
    for method, path, _, _ in calls:
        parts = path.strip("/").split("/")
        group = "" if parts[0] == "api" else parts[1]
        rest = parts[parts.index("namespaces") + 2 :]
        resource = rest[0] + ("/" + rest[2] if len(rest) > 2 else "")
        verb = {"POST": "create", "DELETE": "delete"}.get(
            method, "get" if len(rest) > 1 else "list"
        )
        used.add((group, resource, verb))
    return used


def test_the_role_grants_exactly_the_trainjob_calls(api_server, cfg):
    used = set()
    for states_, extra in (
        (["pending", "running", "succeeded"], {}),
        (["failed_restarts"], {("GET", f"{CORE}/pods"): [tj("pods_oomkilled.json")]}),
    ):
        server, api = api_server(routes(states_, extra))
        with contextlib.suppress(LaunchError):  # the second run fails, as recorded
            launch(cfg, api, [])
        used |= _granted(server.calls)
    (role,) = [
        o
        for o in kustomize(REPO / "k8s" / "base")
        if o["kind"] == "Role" and o["metadata"]["name"] == "lmforge-launcher"
    ]
    granted = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert used <= granted
    trainer_and_events = {g for g in granted if g[0] == "trainer.kubeflow.org" or g[1] == "events"}
    assert trainer_and_events <= used  # nothing granted for TrainJobs that is not used
