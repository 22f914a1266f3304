"""A tiny real Kubernetes API server on 127.0.0.1 that answers with recorded responses.

Responses are recorded in the API's own shapes (``tests/k8s_responses/``); the real
``kubernetes`` client talks to it, so serialization, paths, status codes, headers and the log
stream all go through the client's code. Faults are replies too: a status with headers
(``Reply(429, ..., {"Retry-After": "1"})``), a connection closed before any answer (``DROP``),
or a body cut short (``Reply(..., truncate=True)``). A collection can instead keep state
(``k8s_live.LiveObjects``: create, read, replace, merge patch, server-side apply, delete).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from k8s_live import LiveObjects
from kubernetes import client

from lmforge.launch.kube import api_client

RESPONSES = Path(__file__).parent / "k8s_responses"
NAME = "lmforge-pretrain-recorded"
JOBS = "/apis/kubeflow.org/v1/namespaces/lmforge/pytorchjobs"
CORE = "/api/v1/namespaces/lmforge"


@dataclass(frozen=True)
class Reply:
    code: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without a status line
    truncate: bool = False  # send half the body (half the lines of a log), then close


DROP = Reply(0, drop=True)


def recorded(name: str, **kwargs) -> Reply:
    body = (RESPONSES / name).read_bytes()
    code = json.loads(body).get("code", 200) if name.endswith(".json") else 200
    return Reply(code, body, **kwargs)


def server_error(code: int = 500, **kwargs) -> Reply:
    reason = {500: "InternalError", 503: "ServiceUnavailable", 429: "TooManyRequests"}[code]
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": f"recorded {reason}",
    }
    return Reply(code, json.dumps(status).encode(), **kwargs)


class RecordedApi(ThreadingHTTPServer):
    """Answers (method, path) with the next recorded reply; the last one repeats."""

    daemon_threads = True

    def __init__(self, routes: dict[tuple[str, str], list[Reply]], live: list[LiveObjects] = ()):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes = {k: list(v) for k, v in routes.items()}
        self.live = list(live)  # collections that keep state; recorded routes come first
        self.calls: list[tuple[str, str, dict, object]] = []
        self.lock = threading.Lock()

    def answer(self, method: str, url: str, body: bytes, headers=None) -> tuple[Reply, str]:
        parts = urlsplit(url)
        query, sent = parse_qs(parts.query), json.loads(body or "null")
        with self.lock:
            self.calls.append((method, parts.path, query, sent))
            queue = self.routes.get((method, parts.path))
            live = next((c for c in self.live if c.handles(parts.path)), None)
            if not queue and live:
                code, answer = live.answer(method, parts.path, query, headers or {}, sent)
                reply = Reply(code, json.dumps(answer).encode())
            elif not queue:
                reply = Reply(404, b'{"kind":"Status","code":404,"reason":"NotFound"}')
            else:
                reply = queue.pop(0) if len(queue) > 1 else queue[0]
        ctype = "text/plain" if parts.path.endswith("/log") else "application/json"
        return reply, ctype

    def called(self, method: str, path: str | None = None) -> list:
        return [c for c in self.calls if c[0] == method and path in (None, c[1])]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        reply, ctype = self.server.answer(self.command, self.path, body, self.headers)
        if reply.drop:
            self.close_connection = True
            return
        self.send_response(reply.code)
        self.send_header("Content-Type", ctype)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        if ctype == "text/plain":  # a log streams as the kubelet sends it: a chunk per line
            self._stream_lines(reply)
            return
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body[: len(reply.body) // 2] if reply.truncate else reply.body)
        if reply.truncate:
            self.close_connection = True

    def _stream_lines(self, reply: Reply) -> None:
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        lines = reply.body.splitlines(keepends=True)
        for line in lines[: len(lines) // 2] if reply.truncate else lines:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
        if reply.truncate:  # cut: no closing chunk
            self.close_connection = True
        else:
            self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

    def log_message(self, *args):  # keep pytest's output clean
        pass


def configmaps(*existing: dict) -> LiveObjects:
    """The namespace's ConfigMaps, kept as the API server keeps them; ``existing`` are there
    already (a cluster outlives the launcher: share one between a step's attempts)."""
    live = LiveObjects(f"{CORE}/configmaps", "ConfigMap", "v1")
    for configmap in existing:
        live.answer("POST", live.collection, {}, {}, configmap)
    return live


def start(routes, live: list[LiveObjects] | None = None) -> tuple[RecordedApi, client.ApiClient]:
    """A server for ``routes``, with ``live`` collections (default: an empty ConfigMaps one)."""
    server = RecordedApi(routes, [configmaps()] if live is None else live)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # The launcher's own client for a host (as a kubeconfig would give it).
    return server, api_client(f"http://127.0.0.1:{server.server_address[1]}")


def routes(job_states, extra=None) -> dict[tuple[str, str], list[Reply]]:
    """A job that goes through ``job_states`` (``job_<state>.json``), its master's pod and log
    (its params ConfigMap: ``start``'s live ConfigMaps)."""
    base = {
        ("POST", JOBS): [Reply(201, (RESPONSES / "job_created.json").read_bytes())],
        ("GET", f"{JOBS}/{NAME}"): [recorded(f"job_{s}.json") for s in job_states],
        ("GET", f"{CORE}/pods/{NAME}-master-0"): [recorded("pod_master_running.json")],
        ("GET", f"{CORE}/pods/{NAME}-master-0/log"): [recorded("master_log.txt")],
        ("DELETE", f"{JOBS}/{NAME}"): [recorded("deleted.json")],
    }
    return base | (extra or {})


@pytest.fixture
def api_server():
    """Start fake API servers for a test (``api_server(route_map) -> (server, api)``); all are
    shut down when it ends."""
    servers = []

    def start_one(route_map, live: list[LiveObjects] | None = None):
        server, api = start(route_map, live)
        servers.append(server)
        return server, api

    yield start_one
    for server in servers:
        server.shutdown()
        server.server_close()
