"""MLflow: where runs go, and the UI over that store.

``MLFLOW_TRACKING_URI`` wins; otherwise the embedded store in the repository
(``sqlite:///mlflow.db`` with artifacts in ``mlartifacts/``), so ``dvc repro`` needs no server
and ``lmforge ui`` serves exactly what the pipeline wrote.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lmforge.config import Config


def tracking_uri(cfg: Config) -> str:
    """The tracking URI in force; a relative sqlite path is made absolute against the cwd."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def artifact_location(cfg: Config) -> str | None:
    """Artifact root for experiments we create: a local folder for the embedded store.

    Against a tracking server a relative folder would be a path on *this* machine, which the
    server cannot serve; there the server's own ``--default-artifact-root`` applies (None).
    """
    loc = cfg.tracking.artifact_location
    if "://" in loc:
        return loc
    if tracking_uri(cfg).startswith(("http://", "https://")):
        return None
    return Path(loc).resolve().as_uri()


def client(cfg: Config):
    """An ``MlflowClient`` on the project's store (tracking and model registry alike)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    return mlflow.MlflowClient()


def ui_command(cfg: Config, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    artifacts = artifact_location(cfg) or Path(cfg.tracking.artifact_location).resolve().as_uri()
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", tracking_uri(cfg),
        "--default-artifact-root", artifacts,
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def serve_ui(cfg: Config, host: str = "127.0.0.1", port: int = 5000) -> int:
    """Serve MLflow's UI on the project's store until interrupted; returns the exit code."""
    cmd = ui_command(cfg, host, port)
    print(f"MLflow UI on http://{host}:{port} over {cmd[cmd.index('--backend-store-uri') + 1]}")
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0


# --------------------------------------------------------------------------------------------
# Runs: one parent per pipeline run, one nested run per step, lineage tags on both
# --------------------------------------------------------------------------------------------

PIPELINE_RUN_TAG = "lmforge.pipeline_run_id"
STAGE_TAG = "lmforge.stage"
PARENT_RUN_TAG = "lmforge.parent_run_id"


def git_commit(repo: Path | None = None) -> str:
    """The checked-out commit (with ``-dirty`` when the tree has changes); ``unknown`` outside git."""
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


def _experiment_id(cfg: Config) -> str:
    mlflow_client = client(cfg)
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


def parent_run_id(cfg: Config) -> str:
    """Find (by tag) or create the parent run of this pipeline run."""
    exp_id = _experiment_id(cfg)
    mlflow_client = client(cfg)
    run_key = pipeline_run_id(cfg)
    found = mlflow_client.search_runs(
        [exp_id],
        filter_string=f"tags.`{PIPELINE_RUN_TAG}` = '{run_key}' and tags.`{STAGE_TAG}` = 'pipeline'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    tags = {**lineage_tags(cfg), STAGE_TAG: "pipeline"}
    kfp_run = os.environ.get("KFP_RUN_ID")
    if kfp_run:
        tags["kfp.run_id"] = kfp_run
    run = mlflow_client.create_run(exp_id, tags=tags, run_name=f"pipeline-{run_key}")
    return run.info.run_id


class stage_run:
    """``with stage_run(cfg, "pretrain") as run:`` a nested MLflow run under the pipeline's parent.

    Logs the step's config sections as params and the lineage tags (plus the parent's run id,
    ``lmforge.parent_run_id``); ends FAILED on an exception. The parent run is marked finished
    (or failed) with each step, as a pipeline run has no single process that could close it.
    """

    def __init__(self, cfg: Config, stage: str, sections: tuple[str, ...] = ()):
        self.cfg, self.stage, self.sections = cfg, stage, sections

    def __enter__(self):
        import mlflow

        parent = self.parent_id = parent_run_id(self.cfg)
        tags = {**lineage_tags(self.cfg), STAGE_TAG: self.stage, PARENT_RUN_TAG: parent}
        task = os.environ.get("KFP_TASK_NAME")
        if task:
            tags["kfp.task_name"] = task
        self.run = mlflow.start_run(
            experiment_id=_experiment_id(self.cfg),
            run_name=self.stage,
            parent_run_id=parent,
            tags=tags,
        )
        for section in self.sections:
            values = getattr(self.cfg, section).__dict__
            mlflow.log_params({f"{section}.{k}": str(v)[:500] for k, v in values.items()})
        return self.run

    def __exit__(self, exc_type, exc, tb):
        import mlflow

        status = "FAILED" if exc_type else "FINISHED"
        mlflow.end_run(status)
        client(self.cfg).set_terminated(self.parent_id, status)
        return False
