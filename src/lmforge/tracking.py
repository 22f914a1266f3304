"""MLflow: where runs go, and the UI over that store.

``MLFLOW_TRACKING_URI`` wins; otherwise the embedded store in the repository
(``sqlite:///mlflow.db`` with artifacts in ``mlartifacts/``), so ``dvc repro`` needs no server
and ``lmforge ui`` serves exactly what the pipeline wrote. Inside a pod that fallback is refused:
a sqlite file in a pod vanishes with it (``tracking_uri`` names the secret to fix).

Two modes against a server:

- strict (``client``, ``stage_run``: data stages, evaluate, register, promote): a server that does
  not answer within ``tracking.connect_timeout_s`` is one ``TrackingUnavailable`` line naming the
  URI;
- tolerant (the training path, ``lmforge.train.tracker``): an outage never stops or slows
  training; what could not be sent is buffered in the step's output and replayed
  (``replay(cfg, out_dir)``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lmforge.config import Config, TrackingConfig
from lmforge.errors import ConfigError, LmforgeError


class TrackingUnavailable(LmforgeError):
    """The MLflow tracking server does not answer (the message names the URI and the fix)."""


POD_ENV = "KUBERNETES_SERVICE_HOST"  # set by Kubernetes in every container of a pod


def tracking_uri(cfg: Config) -> str:
    """The tracking URI in force; a relative sqlite path is made absolute against the cwd.

    Inside a pod with no URI configured (the secret that carries ``MLFLOW_TRACKING_URI`` missing)
    this is a ``ConfigError``: never a silent local file that is gone with the pod.
    """
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    uri = env_uri or cfg.tracking.tracking_uri
    if os.environ.get(POD_ENV) and not env_uri and uri == _default_uri():
        raise ConfigError(
            f"running in a pod with no MLflow tracking URI: MLFLOW_TRACKING_URI is unset (the "
            f"secret '{cfg.kubeflow.mlflow_secret}' is missing or lacks that key) and "
            f"tracking.tracking_uri is the default {uri}, a file that vanishes with the pod. Fix: "
            f"kubectl -n {cfg.kubeflow.namespace} create secret generic "
            f"{cfg.kubeflow.mlflow_secret} --from-literal=MLFLOW_TRACKING_URI=http://<server>:5000"
            " (or set tracking.tracking_uri to a server or a volume's path)"
        )
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(project_path(uri[len(prefix) :]))
    return uri


def project_path(path: str) -> Path:
    """A relative store path made absolute against the project: the DVC repository's root
    when DVC runs the command (``DVC_ROOT``; a queued ``dvc exp run`` works in a temporary
    copy under ``.dvc/tmp/exps`` and its runs belong in the project's store, not the copy's),
    else the current directory."""
    return (Path(os.environ.get("DVC_ROOT") or ".") / path).resolve()


def _default_uri() -> str:
    return TrackingConfig().tracking_uri


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def artifact_location(cfg: Config) -> str | None:
    """Artifact root for experiments we create: a local folder for the embedded store.

    Against a tracking server a relative folder would be a path on *this* machine, which the
    server cannot serve; there the server's own ``--default-artifact-root`` applies (None).
    """
    loc = cfg.tracking.artifact_location
    if "://" in loc:
        return loc
    if is_server(tracking_uri(cfg)):
        return None
    return project_path(loc).as_uri()


def server_answers(uri: str, timeout_s: float) -> str | None:
    """None when the server at ``uri`` answers HTTP at all (any status: an auth proxy's 401 is
    an answer), else why not. One request of at most ``timeout_s``."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as exc:  # refused, reset, DNS, timeout, malformed URL
        reason = getattr(exc, "reason", None) or exc
        return f"{type(exc).__name__}: {reason}"


_REACHED: set[str] = set()  # servers this process already reached (one check each)


def check_reachable(uri: str, timeout_s: float) -> None:
    """Return once the server at ``uri`` answers; after ``timeout_s`` without an answer, raise
    ``TrackingUnavailable``. Stores other than http(s) servers are not checked."""
    if not is_server(uri) or uri in _REACHED:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        why = server_answers(uri, max(0.2, min(left, 5.0)))
        if why is None:
            _REACHED.add(uri)
            return
        if time.monotonic() + 0.5 >= deadline:
            raise TrackingUnavailable(
                f"MLflow tracking server {uri} did not answer within {timeout_s:g} s ({why}). "
                "Fix: start the server, or point MLFLOW_TRACKING_URI (or tracking.tracking_uri) "
                "at one that runs"
            )
        time.sleep(0.5)


def client(cfg: Config):
    """An ``MlflowClient`` on the project's store (tracking and model registry alike): strict,
    a server that does not answer within ``tracking.connect_timeout_s`` is an error."""
    import mlflow

    uri = tracking_uri(cfg)
    check_reachable(uri, cfg.tracking.connect_timeout_s)
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient()


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what a metrics store accepts as a value."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def flat_metrics(values: Any, prefix: str = "") -> dict[str, float]:
    """Numbers of a (nested) metrics mapping as ``a.b`` -> float; text, lists, NaN are skipped."""
    out: dict[str, float] = {}
    if isinstance(values, dict):
        for key, value in values.items():
            out.update(flat_metrics(value, f"{prefix}{key}."))
    elif is_number(values):
        out[prefix.rstrip(".")] = float(values)
    return out


def replay(cfg: Config, out_dir: Path) -> dict[str, Any]:
    """Send what a training step buffered in ``out_dir`` (``tracking-buffer.jsonl``) to the
    store now; returns what was sent and what is still unsent (the buffer keeps that)."""
    from lmforge.train.tracker import replay_buffer

    return replay_buffer(cfg, Path(out_dir))


def ui_command(cfg: Config, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    artifacts = artifact_location(cfg) or project_path(cfg.tracking.artifact_location).as_uri()
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        tracking_uri(cfg),
        "--default-artifact-root",
        artifacts,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def serve_ui(cfg: Config, host: str = "127.0.0.1", port: int = 5000) -> int:
    """Serve MLflow's UI on the project's store until interrupted (Ctrl-C, SIGTERM, SIGHUP:
    exit code 0) or it exits (its code). The server, its uvicorn workers and job runner are
    stopped with lmforge (``lmforge.children``): none is left holding the port."""
    from lmforge.children import run_until_stopped

    cmd = ui_command(cfg, host, port)
    print(f"MLflow UI on http://{host}:{port} over {cmd[cmd.index('--backend-store-uri') + 1]}")
    return run_until_stopped(cmd)


# --------------------------------------------------------------------------------------------
# Runs: one parent per pipeline run, one nested run per step, lineage tags on both
# --------------------------------------------------------------------------------------------

PIPELINE_RUN_TAG = "lmforge.pipeline_run_id"
STAGE_TAG = "lmforge.stage"
PARENT_RUN_TAG = "lmforge.parent_run_id"


def git_commit(repo: Path | None = None) -> str:
    """The checked-out commit (``-dirty`` when the tree has changes); ``unknown`` outside git."""
    env_commit = os.environ.get("LMFORGE_GIT_COMMIT")  # baked into images, set by KFP
    if env_commit:
        return env_commit
    from lmforge.vcs import git_state

    try:
        sha, dirty = git_state(repo)
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def data_version(dvc_file: Path = Path("data.dvc")) -> str:
    """The md5 that ``data.dvc`` records for ``data/``: which raw data a run saw."""
    import yaml

    try:
        meta = yaml.safe_load(dvc_file.read_text())
        return str(meta["outs"][0]["md5"])
    except (OSError, KeyError, IndexError, TypeError):
        return "unknown"


def pipeline_run_id(cfg: Config) -> str:
    """``LMFORGE_PIPELINE_RUN_ID`` when set (``make run`` sets one), the KFP run id on Kubeflow,
    else stable for this code and these params, so the stages of one ``dvc repro`` share it."""
    explicit = os.environ.get("LMFORGE_PIPELINE_RUN_ID") or os.environ.get("KFP_RUN_ID")
    if explicit:
        return explicit
    return f"local-{git_commit()[:12]}-{cfg.params_hash()}"


def lineage_tags(cfg: Config) -> dict[str, str]:
    return {
        "lmforge.git_commit": git_commit(),
        "lmforge.data_version": data_version(),
        "lmforge.params_hash": cfg.params_hash(),
        PIPELINE_RUN_TAG: pipeline_run_id(cfg),
    }


def dataset(path: Path, name: str, context: str) -> dict[str, Any]:
    """A run's input as a JSON-ready record (a training step buffers it while the store is
    away; ``lineage.dataset_input`` makes it MLflow's entity): its digest is the md5 DVC records
    for the file or folder, its source the path as DVC names it (relative to the project) and
    the git commit, its profile the files and bytes; ``context`` training, validation or test."""
    from lmforge.lineage import dvc_md5

    path = Path(path)
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    resolved = path.resolve()
    try:
        named = resolved.relative_to(project_path(".")).as_posix()
    except ValueError:  # outside the project (a test's folder, an external input)
        named = str(resolved)
    return {
        "name": name,
        "digest": dvc_md5(path),
        "source": json.dumps({"dvc_path": named, "git_commit": git_commit()}),
        "profile": json.dumps({"files": len(files), "bytes": sum(f.stat().st_size for f in files)}),
        "context": context,
    }


def experiment_id(cfg: Config, mlflow_client=None) -> str:
    """The id of ``tracking.experiment``, created (with our artifact root) if absent."""
    mlflow_client = mlflow_client or client(cfg)
    exp = mlflow_client.get_experiment_by_name(cfg.tracking.experiment)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow_client.create_experiment(
            cfg.tracking.experiment, artifact_location=artifact_location(cfg)
        )
    except Exception:  # created concurrently by another step: use theirs
        exp = mlflow_client.get_experiment_by_name(cfg.tracking.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def parent_run_id(cfg: Config, mlflow_client=None, lineage: dict[str, str] | None = None) -> str:
    """Find (by tag) or create the parent run of this pipeline run.

    ``lineage``: tags recorded earlier (``parent_tags``), for a run created later by a replay.
    """
    mlflow_client = mlflow_client or client(cfg)
    exp_id = experiment_id(cfg, mlflow_client)
    tags = lineage or parent_tags(cfg)
    run_key = tags[PIPELINE_RUN_TAG]
    found = mlflow_client.search_runs(
        [exp_id],
        filter_string=(
            f"tags.`{PIPELINE_RUN_TAG}` = '{run_key}' and tags.`{STAGE_TAG}` = 'pipeline'"
        ),
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = mlflow_client.create_run(exp_id, tags=tags, run_name=f"pipeline-{run_key}")
    return run.info.run_id


def parent_tags(cfg: Config) -> dict[str, str]:
    """Tags of the pipeline's parent run: lineage, the stage ``pipeline``, the KFP run."""
    tags = {**lineage_tags(cfg), STAGE_TAG: "pipeline"}
    kfp_run = os.environ.get("KFP_RUN_ID")
    if kfp_run:
        tags["kfp.run_id"] = kfp_run
    return tags


def stage_tags(cfg: Config, stage: str, parent: str | None = None) -> dict[str, str]:
    """Tags of a step's run: lineage, the stage, the parent (when known), the KFP task."""
    tags = {**lineage_tags(cfg), STAGE_TAG: stage}
    if parent:
        tags[PARENT_RUN_TAG] = parent
    task = os.environ.get("KFP_TASK_NAME")
    if task:
        tags["kfp.task_name"] = task
    return tags


def section_params(cfg: Config, sections: tuple[str, ...]) -> dict[str, str]:
    """The step's config sections as MLflow params (``section.key``; values cut to 500 chars)."""
    out = {}
    for section in sections:
        values = getattr(cfg, section).__dict__
        out.update({f"{section}.{k}": str(v)[:500] for k, v in values.items()})
    return out


class stage_run:
    """``with stage_run(cfg, "pretrain") as run:`` a nested MLflow run under the pipeline's parent.

    Strict: a server that does not answer is ``TrackingUnavailable`` at once (the training path
    uses ``lmforge.train.tracker.TrainingTracker`` instead, which never stops training). Logs the
    step's config sections as params and the lineage tags (plus the parent's run id,
    ``lmforge.parent_run_id``); ends FAILED on an exception. The parent run is marked finished
    (or failed) with each step, as a pipeline run has no single process that could close it.
    """

    def __init__(self, cfg: Config, stage: str, sections: tuple[str, ...] = ()):
        self.cfg, self.stage, self.sections = cfg, stage, sections

    def __enter__(self):
        import mlflow

        mlflow_client = client(self.cfg)  # fails fast when the server does not answer
        parent = self.parent_id = parent_run_id(self.cfg, mlflow_client)
        self.run = mlflow.start_run(
            experiment_id=experiment_id(self.cfg, mlflow_client),
            run_name=self.stage,
            parent_run_id=parent,
            tags=stage_tags(self.cfg, self.stage, parent),
        )
        mlflow.log_params(section_params(self.cfg, self.sections))
        return self.run

    def __exit__(self, exc_type, exc, tb):
        import mlflow

        status = "FAILED" if exc_type else "FINISHED"
        mlflow.end_run(status)
        client(self.cfg).set_terminated(self.parent_id, status)
        return False
