"""The launcher's Kubernetes side against recorded API responses.

A tiny real HTTP server on 127.0.0.1 answers with responses recorded in the API's own shapes
(``tests/k8s_responses/``); the real ``kubernetes`` client talks to it, so serialization,
paths, status codes and the log stream all go through the client's code.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client

from lmforge.config import load_config
from lmforge.errors import LaunchError
from lmforge.launch.launcher import launch_pretrain
from lmforge.launch.pytorchjob import render

RESPONSES = Path(__file__).parent / "k8s_responses"
NAME = "lmforge-pretrain-recorded"
JOBS = "/apis/kubeflow.org/v1/namespaces/lmforge/pytorchjobs"
CORE = "/api/v1/namespaces/lmforge"


def recorded(name: str) -> tuple[int, bytes]:
    body = (RESPONSES / name).read_bytes()
    code = json.loads(body).get("code", 200) if name.endswith(".json") else 200
    return code, body


class RecordedApi(ThreadingHTTPServer):
    """Answers (method, path) with the next recorded response; the last one repeats."""

    daemon_threads = True

    def __init__(self, routes: dict[tuple[str, str], list[tuple[int, bytes]]]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes = {k: list(v) for k, v in routes.items()}
        self.calls: list[tuple[str, str, dict, object]] = []
        self.lock = threading.Lock()

    def answer(self, method: str, url: str, body: bytes) -> tuple[int, bytes, str]:
        parts = urlsplit(url)
        with self.lock:
            self.calls.append(
                (method, parts.path, parse_qs(parts.query), json.loads(body or "null"))
            )
            queue = self.routes.get((method, parts.path))
            if not queue:
                return 404, b'{"kind":"Status","code":404,"reason":"NotFound"}', "application/json"
            code, payload = queue.pop(0) if len(queue) > 1 else queue[0]
        ctype = "text/plain" if parts.path.endswith("/log") else "application/json"
        return code, payload, ctype

    def called(self, method: str, path: str) -> list:
        return [c for c in self.calls if c[0] == method and c[1] == path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        code, payload, ctype = self.server.answer(self.command, self.path, body)
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture
def api_server():
    servers = []

    def start(routes):
        server = RecordedApi(routes)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        conf = client.Configuration()
        conf.host = f"http://127.0.0.1:{server.server_address[1]}"
        return server, client.ApiClient(conf)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cfg(monkeypatch):
    monkeypatch.setenv("LMFORGE_PIPELINE_RUN_ID", "recorded")
    return load_config(None, ["launch.poll_s=0.01", "launch.timeout_s=30"])


def routes(job_states, extra=None):
    base = {
        ("POST", f"{CORE}/configmaps"): [recorded("configmap_created.json")],
        ("POST", JOBS): [(201, (RESPONSES / "job_created.json").read_bytes())],
        ("GET", f"{JOBS}/{NAME}"): [recorded(f"job_{s}.json") for s in job_states],
        ("GET", f"{CORE}/pods/{NAME}-master-0"): [recorded("pod_master_running.json")],
        ("GET", f"{CORE}/pods/{NAME}-master-0/log"): [recorded("master_log.txt")],
        ("DELETE", f"{JOBS}/{NAME}"): [recorded("deleted.json")],
        ("DELETE", f"{CORE}/configmaps/{NAME}-params"): [recorded("deleted.json")],
    }
    return base | (extra or {})


def launch(cfg, api, lines):
    return launch_pretrain(
        cfg, Path("outputs/tokenized"), Path("outputs/pretrain"), backend="kubernetes",
        api=api, echo=lines.append,
    )  # fmt: skip


def test_created_running_succeeded(api_server, cfg):
    server, api = api_server(routes(["pending", "running", "running", "succeeded"]))
    lines: list[str] = []
    result = launch(cfg, api, lines)
    assert result["job"] == NAME and result["adopted"] is False
    (post,) = server.called("POST", JOBS)
    configmap, job = render(cfg, Path("outputs/tokenized"), Path("outputs/pretrain"))
    assert post[3] == job  # the rendered job, as sent
    assert server.called("POST", f"{CORE}/configmaps")[0][3] == configmap
    states = [line.rsplit(": ", 1)[1] for line in lines if line.startswith("PyTorchJob ")]
    assert states == ["Created", "Running", "Succeeded"]
    assert "[master-0] step 20 | loss 6.4410 | lr 6.7e-04" in lines  # the master's log stream
    (log_call,) = server.called("GET", f"{CORE}/pods/{NAME}-master-0/log")
    assert log_call[2]["follow"][0].lower() == "true" and log_call[2]["container"] == ["pytorch"]
    assert server.called("DELETE", f"{JOBS}/{NAME}")
    assert server.called("DELETE", f"{CORE}/configmaps/{NAME}-params")


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


def test_existing_job_is_adopted_not_duplicated(api_server, cfg):
    server, api = api_server(
        routes(
            ["running", "running", "succeeded"],
            {
                ("POST", JOBS): [recorded("job_already_exists.json")],
                ("POST", f"{CORE}/configmaps"): [recorded("configmap_already_exists.json")],
            },
        )
    )
    lines: list[str] = []
    result = launch(cfg, api, lines)
    assert result["adopted"] is True
    assert len(server.called("POST", JOBS)) == 1
    assert any("already exists (Running): adopting it" in line for line in lines)


def test_timeout_raises_and_keeps_the_job_when_asked(api_server, cfg):
    cfg.launch.timeout_s = 0
    cfg.launch.delete_on_finish = False
    server, api = api_server(routes(["running"]))
    with pytest.raises(
        LaunchError, match=r"did not finish within launch.timeout_s=0s \(still Running\)"
    ):
        launch(cfg, api, [])
    assert not server.called("DELETE", f"{JOBS}/{NAME}")


def test_forbidden_names_the_missing_role(api_server, cfg):
    _, api = api_server(routes(["running"], {("POST", JOBS): [recorded("job_forbidden.json")]}))
    with pytest.raises(LaunchError, match=r"HTTP 403.*k8s/base/rbac.yaml"):
        launch(cfg, api, [])
