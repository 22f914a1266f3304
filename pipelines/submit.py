"""``lmforge pipeline submit``: a pipeline version named from the git commit, then a run.

The pipeline is compiled from the config, uploaded as a new version of ``<prefix>-<name>``
(the pipeline is created on first upload; a commit submitted twice reuses its version), and a run
of that version starts in the ``kubeflow.experiment`` experiment. A tree with uncommitted
changes is refused unless forced: a version must say exactly which code it runs. The run's pods
use ``kubeflow.service_account`` (``k8s/pipeline``: exactly what lmforge's steps call, not KFP's
shared pipeline-runner); it is set on the run because kfp-kubernetes has no per-task service
account, so every step of the run uses it. Authentication
goes through ``kfp.Client``'s standard options and environment (``KF_PIPELINES_*``, in-cluster
service-account tokens, ``~/.config/kfp/context.json``).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lmforge import vcs
from lmforge.config import Config
from lmforge.errors import PipelineError
from lmforge_pipelines.compile import PIPELINES, compile_pipeline


def git_state(repo: Path | None = None) -> tuple[str, list[str]]:
    """(HEAD commit, changed tracked files) of ``repo``, by default the working directory's
    checkout (lmforge may be installed anywhere: the code submitted is the checkout's)."""
    repo = Path(repo) if repo is not None else Path.cwd()
    try:
        return vcs.git_state(repo)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = (getattr(exc, "stderr", None) or str(exc)).strip().splitlines()
        raise PipelineError(
            f"{repo}: not a git checkout ({detail[0] if detail else exc}); pipeline versions are "
            "named from the git commit: run `lmforge pipeline submit` inside the lmforge checkout"
        ) from None


def version_name(sha: str, dirty: list[str], now: datetime | None = None) -> str:
    """``<sha12>``; a forced dirty tree gets ``<sha12>-dirty-<UTC time>`` (never reused)."""
    if not dirty:
        return sha[:12]
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dt%H%M%S")
    return f"{sha[:12]}-dirty-{stamp}"


def _name_filter(name: str) -> str:
    return json.dumps(
        {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]}
    )


def _existing_version(client: Any, pipeline_id: str, name: str) -> str | None:
    found = client.list_pipeline_versions(pipeline_id, filter=_name_filter(name))
    versions = found.pipeline_versions or []
    return versions[0].pipeline_version_id if versions else None


def submit(
    cfg: Config,
    name: str = "full",
    host: str | None = None,
    force: bool = False,
    repo: Path | None = None,
) -> dict[str, str]:
    """Upload pipeline ``name`` as a version named from ``repo``'s commit (default: the
    working directory's checkout); start a run."""
    import kfp

    if name not in PIPELINES:
        raise PipelineError(f"pipeline {name!r}: unknown; choose one of {', '.join(PIPELINES)}")

    host = host or cfg.kubeflow.host or os.environ.get("KF_PIPELINES_ENDPOINT")
    if not host:
        raise PipelineError(
            "no Kubeflow Pipelines host: pass --host URL, set kubeflow.host in params.yaml "
            "or KF_PIPELINES_ENDPOINT"
        )
    sha, dirty = git_state(repo)
    if dirty and not force:
        shown = ", ".join(dirty[:5]) + (" ..." if len(dirty) > 5 else "")
        raise PipelineError(
            f"git tree has uncommitted changes ({shown}): commit them so the pipeline version "
            "names the code it runs, or pass --force"
        )
    version = version_name(sha, dirty)
    pipeline_name = f"{cfg.kubeflow.pipeline_prefix}-{name}"
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(cfg, name, Path(tmp) / "pipeline.yaml")
        client = kfp.Client(host=host, namespace=cfg.kubeflow.namespace)
        pipeline_id = client.get_pipeline_id(pipeline_name)
        if pipeline_id is None:
            pipeline_id = client.upload_pipeline(
                str(package), pipeline_name=pipeline_name, description=f"lmforge {name} pipeline"
            ).pipeline_id
        version_id = _existing_version(client, pipeline_id, version)
        if version_id is None:
            version_id = client.upload_pipeline_version(
                str(package),
                pipeline_version_name=version,
                pipeline_id=pipeline_id,
                description=f"git commit {sha}" + (" with uncommitted changes" if dirty else ""),
            ).pipeline_version_id
    experiment = client.create_experiment(cfg.kubeflow.experiment)
    run = client.run_pipeline(
        experiment.experiment_id,
        job_name=f"{pipeline_name}-{version}",
        pipeline_id=pipeline_id,
        version_id=version_id,
        # kfp-kubernetes has no per-task service account: the run's is every step's.
        service_account=cfg.kubeflow.service_account,
    )
    ui = os.environ.get("KF_PIPELINES_UI_ENDPOINT", host).rstrip("/")
    return {
        "pipeline": pipeline_name,
        "pipeline_id": pipeline_id,
        "version": version,
        "version_id": version_id,
        "experiment_id": experiment.experiment_id,
        "run_id": run.run_id,
        "url": f"{ui}/#/runs/details/{run.run_id}",
    }
