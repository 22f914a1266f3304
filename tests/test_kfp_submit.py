"""``lmforge pipeline submit`` against a recorded Kubeflow Pipelines API exchange.

A small HTTP server on 127.0.0.1 replays the recorded responses (``tests/recordings/kfp/``) in
order and keeps every request; the real ``kfp.Client`` talks to it. A request the recording
does not expect next gets a 400 and fails the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from lmforge.config import load_config, load_config_text
from lmforge.errors import PipelineError
from lmforge_pipelines import NAMES as PIPELINES
from lmforge_pipelines.submit import submit, version_name

REPO = Path(__file__).resolve().parents[1]
RECORDINGS = REPO / "tests" / "recordings" / "kfp"


class Replay:
    """Serves one recording's responses in order; ``requests`` holds what the client sent."""

    def __init__(self, recording: str, substitutions: dict[str, str]):
        text = (RECORDINGS / recording).read_text()
        for key, value in substitutions.items():
            text = text.replace(key, value)
        self.exchanges = json.loads(text)["exchanges"]
        self.requests: list[dict] = []
        self.errors: list[str] = []
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                replay.requests.append(
                    {
                        "method": self.command,
                        "path": url.path,
                        "query": parse_qs(url.query, keep_blank_values=True),
                        "body": body,
                    }
                )
                index = len(replay.requests) - 1
                expected = (
                    replay.exchanges[index]["request"] if index < len(replay.exchanges) else None
                )
                if expected != {"method": self.command, "path": url.path}:
                    replay.errors.append(f"unexpected {self.command} {url.path}, wanted {expected}")
                    status, payload = 400, {"error_message": "not in the recording"}
                else:
                    response = replay.exchanges[index]["response"]
                    status, payload = response["status"], response["body"]
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def request(self, method: str, path: str) -> dict:
        (found,) = [r for r in self.requests if r["method"] == method and r["path"] == path]
        return found


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A git checkout with one commit (what submit names the version from)."""
    repo = tmp_path / "checkout"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "params.yaml").write_text("pretrain:\n  max_steps: 5\n")
    git(repo, "add", "params.yaml")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "init")
    return repo


@pytest.fixture
def cfg():
    return load_config(REPO / "params.yaml", ["pretrain.max_steps=7"])


def multipart_file(body: bytes) -> bytes:
    """The uploaded file's bytes out of a multipart/form-data body."""
    head, _, rest = body.partition(b"\r\n\r\n")
    assert b'name="uploadfile"' in head
    return rest.rsplit(b"\r\n--", 1)[0]


def test_first_submit_uploads_pipeline_and_version_then_creates_a_run(checkout, cfg):
    sha = git(checkout, "rev-parse", "HEAD")
    with Replay("first_submit.json", {"@VERSION@": sha[:12]}) as api:
        result = submit(cfg, "full", host=api.url, repo=checkout)
    assert api.errors == []
    assert len(api.requests) == len(api.exchanges)
    upload = api.request("POST", "/apis/v2beta1/pipelines/upload")
    assert upload["query"]["name"] == ["lmforge-full"]
    version = api.request("POST", "/apis/v2beta1/pipelines/upload_version")
    assert version["query"]["name"] == [sha[:12]]
    assert version["query"]["pipelineid"] == [result["pipeline_id"]]
    assert sha in version["query"]["description"][0]
    spec = yaml.safe_load_all(multipart_file(version["body"]).decode())
    root = next(spec)["root"]
    params = root["dag"]["tasks"]["settings"]["inputs"]["parameters"]["params"]
    # the submitted config travels: baked into the steps and as the run form's default
    assert load_config_text(params["runtimeValue"]["constant"]).pretrain.max_steps == 7
    assert root["inputDefinitions"]["parameters"]["pretrain_steps"]["defaultValue"] == 7
    experiment = json.loads(api.request("POST", "/apis/v2beta1/experiments")["body"])
    assert experiment["display_name"] == cfg.kubeflow.experiment
    run = json.loads(api.request("POST", "/apis/v2beta1/runs")["body"])
    assert run["experiment_id"] == result["experiment_id"]
    assert run["pipeline_version_reference"] == {
        "pipeline_id": result["pipeline_id"],
        "pipeline_version_id": result["version_id"],
    }
    assert run["display_name"] == f"lmforge-full-{sha[:12]}"
    # Every step runs as lmforge's own account (k8s/pipeline), not KFP's shared pipeline-runner.
    assert run["service_account"] == cfg.kubeflow.service_account == "lmforge-pipeline"
    assert result["version"] == sha[:12]
    assert result["url"] == f"{api.url}/#/runs/details/{result['run_id']}"


def test_resubmitting_a_commit_reuses_pipeline_version_and_experiment(checkout, cfg):
    sha = git(checkout, "rev-parse", "HEAD")
    with Replay("resubmit_same_commit.json", {"@VERSION@": sha[:12]}) as api:
        result = submit(cfg, "full", host=api.url, repo=checkout)
    assert api.errors == []
    assert [r["method"] for r in api.requests].count("POST") == 1  # only the run
    listed = api.requests[2]
    assert sha[:12] in listed["query"]["filter"][0]
    assert (
        result["version_id"]
        == json.loads(api.request("POST", "/apis/v2beta1/runs")["body"])[
            "pipeline_version_reference"
        ]["pipeline_version_id"]
    )


def test_dirty_tree_is_refused_before_any_api_call(checkout, cfg):
    (checkout / "params.yaml").write_text("pretrain:\n  max_steps: 6\n")
    refused = pytest.raises(PipelineError, match=r"uncommitted changes \(params.yaml\).*--force")
    with Replay("first_submit.json", {}) as api, refused:
        submit(cfg, "full", host=api.url, repo=checkout)
    assert api.requests == []


def test_forced_dirty_submit_names_the_version_as_dirty(checkout, cfg):
    (checkout / "params.yaml").write_text("pretrain:\n  max_steps: 6\n")
    sha = git(checkout, "rev-parse", "HEAD")
    with Replay("first_submit.json", {"@VERSION@": "forced"}) as api:
        result = submit(cfg, "full", host=api.url, force=True, repo=checkout)
    assert api.errors == []
    name = api.request("POST", "/apis/v2beta1/pipelines/upload_version")["query"]["name"][0]
    assert name.startswith(f"{sha[:12]}-dirty-")
    assert result["version"] == name


def test_the_version_comes_from_the_working_directorys_checkout(checkout, cfg, monkeypatch):
    """lmforge may be installed anywhere: without ``repo`` the commit is the cwd's checkout's."""
    (checkout / "sub").mkdir()
    monkeypatch.chdir(checkout / "sub")
    sha = git(checkout, "rev-parse", "HEAD")
    with Replay("first_submit.json", {"@VERSION@": sha[:12]}) as api:
        result = submit(cfg, "full", host=api.url)
    assert api.errors == []
    assert result["version"] == sha[:12]


def test_outside_a_checkout_is_a_clear_error_before_any_api_call(tmp_path, cfg, monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.chdir(plain)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no checkout above either
    refused = pytest.raises(PipelineError, match=rf"{plain}: not a git checkout.*inside the")
    with Replay("first_submit.json", {}) as api, refused:
        submit(cfg, "full", host=api.url)
    assert api.requests == []


def test_version_names():
    assert version_name("a" * 40, []) == "a" * 12
    assert version_name("a" * 40, ["x"]).startswith("aaaaaaaaaaaa-dirty-")


def test_missing_host_and_unknown_pipeline_are_clear_errors(checkout, cfg, monkeypatch):
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    with pytest.raises(PipelineError, match="--host"):
        submit(cfg, "full", repo=checkout)
    with pytest.raises(PipelineError, match=f"unknown; choose one of {', '.join(PIPELINES)}"):
        submit(cfg, "nope", host="http://127.0.0.1:9", repo=checkout)


def test_cli_submit_prints_the_run_url(cfg):
    """The console script end to end (forced: the shared working tree may be dirty)."""
    lmforge = Path(sys.executable).parent / "lmforge"
    with Replay("first_submit.json", {"@VERSION@": "cli"}) as api:
        proc = subprocess.run(
            [str(lmforge), "pipeline", "submit", "full", "--host", api.url, "--force"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 0, proc.stderr
    assert api.errors == []
    run_id = api.exchanges[-1]["response"]["body"]["run_id"]
    assert f"{api.url}/#/runs/details/{run_id}" in proc.stdout
