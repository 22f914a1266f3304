"""The Kubernetes requests lmforge's code makes, recorded against ``k8s_fake``'s API server.

Each scenario drives the real code (the launcher of either API, the deployer) through every path
that calls the API: a params ConfigMap left by a partial cleanup (409, read, delete), a job that
already exists (409, adopt), a job that fails (pods, logs, events), and the cleanup; a deploy
that applies and waits. What the server saw, turned into RBAC permissions, is what each service
account must be granted: no more, no less.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from k8s_fake import CORE, JOBS, NAME, RESPONSES, RecordedApi, Reply, configmaps, recorded
from k8s_fake_trainjob import TRAINJOBS, tj
from k8s_fake_trainjob import routes as trainjob_routes

from k8s_policy.rbac import Permission, permissions
from lmforge.config import load_config
from lmforge.errors import LaunchError
from lmforge.launch.kube import api_client
from lmforge.launch.launcher import launch_pretrain
from lmforge.launch.pytorchjob import params_configmap_name
from lmforge.serve.kserve import GROUP, PLURAL, VERSION

CM = f"{CORE}/configmaps/{params_configmap_name(NAME)}"
ISVC = f"/apis/{GROUP}/{VERSION}/namespaces/lmforge/{PLURAL}/lmforge-lm"


def _status(code: int, reason: str) -> Reply:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
    return Reply(code, json.dumps(body | {"reason": reason, "message": reason}).encode())


def _left_configmap() -> Reply:
    """The params ConfigMap an earlier launch of this run id left, with other params."""
    meta = {"name": params_configmap_name(NAME), "namespace": "lmforge", "uid": "u-1"}
    cm = {"kind": "ConfigMap", "apiVersion": "v1", "metadata": meta | {"resourceVersion": "7"}}
    return Reply(200, json.dumps(cm | {"data": {"params.yaml": "train:\n  lr: 0.5\n"}}).encode())


def _configmap_routes() -> dict:
    return {
        ("POST", f"{CORE}/configmaps"): [_status(409, "AlreadyExists"), Reply(201, b"{}")],
        ("GET", CM): [_left_configmap()],
        ("DELETE", CM): [recorded("deleted.json")],
    }


class _Recording(RecordedApi):
    """The fake API server, keeping each request with the status it was answered with (an
    apply answered 201 created the object: RBAC wants ``create`` for that too)."""

    def __init__(self, routes):
        super().__init__(routes, [configmaps()])
        self.answered: list[tuple[str, str, dict, int]] = []

    def answer(self, method, url, body, headers=None):
        reply, ctype = super().answer(method, url, body, headers)
        parts = urlsplit(url)
        self.answered.append((method, parts.path, parse_qs(parts.query), reply.code))
        return reply, ctype


def _start(routes):
    server = _Recording(routes)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, api_client(f"http://127.0.0.1:{server.server_address[1]}")


def _requests(server) -> set[tuple[str, Permission]]:
    return {
        (namespace, perm)
        for method, path, query, code in server.answered
        for namespace, found in [permissions(method, path, query, code)]
        for perm in found
    }


def _launch(api_name: str, routes: dict) -> set[tuple[str, Permission]]:
    cfg = load_config(None, [f"launch.api={api_name}", "launch.poll_s=0.01", "launch.timeout_s=30"])
    server, api = _start(routes)
    try:
        with contextlib.suppress(LaunchError):  # the failing scenarios fail, as they should
            launch_pretrain(
                cfg,
                Path("outputs/tokenized"),
                Path("outputs/pretrain"),
                backend="kubernetes",
                api=api,
                echo=lambda line: None,
            )
        return _requests(server)
    finally:
        server.shutdown()
        server.server_close()


def launcher_requests() -> set[tuple[str, Permission]]:
    """Both APIs: a replaced ConfigMap then a job that fails; an adopted job that succeeds."""
    no_job = _status(404, "NotFound")
    pytorch_failed = {
        ("POST", JOBS): [Reply(201, (RESPONSES / "job_created.json").read_bytes())],
        ("GET", f"{JOBS}/{NAME}"): [
            no_job,
            recorded("job_running.json"),
            recorded("job_failed.json"),
        ],
        ("GET", f"{CORE}/pods/{NAME}-master-0"): [recorded("pod_master_running.json")],
        ("GET", f"{CORE}/pods/{NAME}-master-0/log"): [recorded("master_log.txt")],
        ("GET", f"{CORE}/pods"): [recorded("pods_failed.json")],
        ("DELETE", f"{JOBS}/{NAME}"): [recorded("deleted.json")],
    } | _configmap_routes()
    pytorch_adopted = pytorch_failed | {
        ("POST", JOBS): [_status(409, "AlreadyExists")],
        ("GET", f"{JOBS}/{NAME}"): [recorded("job_succeeded.json")],
    }
    trainjob_failed = trainjob_routes(["running", "failed_restarts"]) | _configmap_routes()
    trainjob_failed[("GET", f"{TRAINJOBS}/{NAME}")].insert(0, no_job)
    trainjob_adopted = trainjob_routes(["succeeded"]) | _configmap_routes()
    trainjob_adopted[("POST", TRAINJOBS)] = [tj("already_exists.json")]
    return (
        _launch("pytorchjob", pytorch_failed)
        | _launch("pytorchjob", pytorch_adopted)
        | _launch("trainjob", trainjob_failed)
        | _launch("trainjob", trainjob_adopted)
    )


def deployer_requests(manifest: dict) -> set[tuple[str, Permission]]:
    """An InferenceService applied, then watched until Ready."""
    from lmforge.serve.deploy import InferenceServices

    routes = {
        ("PATCH", ISVC): [Reply(201, (RESPONSES / "isvc_created.json").read_bytes())],
        ("GET", ISVC): [recorded("isvc_pending.json"), recorded("isvc_ready.json")],
    }
    server, api = _start(routes)
    try:
        services = InferenceServices(api, "lmforge", echo=lambda line: None)
        services.apply(manifest)
        with contextlib.suppress(LaunchError):
            services.wait_ready(manifest["metadata"]["name"], timeout_s=30, poll_s=0.01)
        return _requests(server)
    finally:
        server.shutdown()
        server.server_close()
