"""``launch_pretrain``: pretraining as a Kubeflow PyTorchJob or TrainJob (``launch.api``), on a
cluster or on local processes.

Both backends run the manifests ``pytorchjob.render`` (or ``trainjob.render``) produces; each
replica (node) runs ``lmforge pretrain --backend inline`` (a TrainJob's under torchrun) and
writes the folder layout of ``lmforge.train.pretrain.pretrain`` (``model/``, ``checkpoints/``,
``metrics.json``, ``plots/loss.csv``) under ``out_dir`` on the shared volume.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.errors import LaunchError
from lmforge.launch.kube_logs import trainer_summary
from lmforge.launch.pytorchjob import is_elastic, render
from lmforge.launch.retry import RETRY_BASE_S
from lmforge.train.result import PretrainResult


def _root(tokenized_dir: Path, out_dir: Path) -> Path:
    """The local folder the shared volume stands for: the working directory when it holds both
    folders (so paths on the volume match a cluster's), else their closest common folder."""
    cwd = Path.cwd().resolve()
    paths = [Path(tokenized_dir).resolve(), Path(out_dir).resolve()]
    if all(p.is_relative_to(cwd) for p in paths):
        return cwd
    return Path(os.path.commonpath(paths))


@dataclass
class LocalPretrain(PretrainResult):
    """The trainer's result and how the local runner ran the job."""

    job: str = ""
    replicas: int = 0
    restarts: int = 0
    backend: str = "local"


@dataclass
class KubernetesPretrain(PretrainResult):
    """The trainer's result and which PyTorchJob produced it (``adopted``: created earlier)."""

    job: str = ""
    adopted: bool = False
    backend: str = "kubernetes"


def launch_pretrain(
    cfg: Config, tokenized_dir: Path, out_dir: Path, backend: str = "local", **options: Any
) -> PretrainResult:
    """Run the PyTorchJob to completion; return the trainer's result and the job's name.

    ``options`` go to the backend: the local runner's (``echo``, ``on_start``), or for
    Kubernetes ``api`` (a ``kubernetes.client.ApiClient``; default: in-cluster or kubeconfig)
    and ``echo``.
    """
    tokenized_dir, out_dir = Path(tokenized_dir), Path(out_dir)
    if backend == "local":
        return _launch_local(cfg, tokenized_dir, out_dir, **options)
    if backend == "kubernetes":
        return _launch_kubernetes(cfg, tokenized_dir, out_dir, **options)
    raise LaunchError(f"launch.backend={backend!r}: expected local or kubernetes")


def _launch_local(cfg: Config, tokenized_dir: Path, out_dir: Path, **kwargs: Any) -> LocalPretrain:
    from lmforge.launch.local_runner import LocalRunner

    if not (tokenized_dir / "blocks").is_dir():
        raise LaunchError(
            f"{tokenized_dir}/blocks: no packed blocks to pretrain on; run `lmforge tokenize` "
            "(or `dvc repro tokenize`) first"
        )
    root = _root(tokenized_dir, out_dir)
    if cfg.launch.api == "trainjob":
        from lmforge.launch.trainjob import render as render_trainjob
        from lmforge.launch.trainjob import render_runtime
        from lmforge.launch.trainjob_runner import TrainJobRunner

        configmap, job = render_trainjob(cfg, tokenized_dir, out_dir, root=root)
        runner_of = functools.partial(TrainJobRunner, job, render_runtime(cfg))
    else:
        configmap, job = render(cfg, tokenized_dir, out_dir, root=root)
        runner_of = functools.partial(LocalRunner, job)
    runner = runner_of(
        volumes={cfg.launch.pvc_name: root},
        configmaps=[configmap],
        timeout_s=cfg.launch.timeout_s,
        peer_timeout_s=cfg.launch.peer_timeout_s,
        **kwargs,
    )
    ran = runner.run()
    metrics = out_dir / "metrics.json"
    try:
        return LocalPretrain.from_metrics_file(metrics, **ran)
    except (OSError, ValueError, KeyError) as exc:
        raise LaunchError(
            f"{metrics}: job {ran['job']} succeeded but its result is unreadable ({exc}); "
            "rerun `lmforge pretrain` (it resumes from the last checkpoint)"
        ) from None


def _launch_kubernetes(
    cfg: Config, tokenized_dir: Path, out_dir: Path, api: Any = None, echo: Any = print
) -> KubernetesPretrain:
    from lmforge.launch.kube import KubeJob, api_client

    la = cfg.launch
    if la.api == "trainjob":
        from lmforge.launch.kube_trainjob import TrainJobKube as KubeJob
        from lmforge.launch.trainjob import render as render_trainjob

        configmap, job = render_trainjob(cfg, tokenized_dir, out_dir)
    else:
        configmap, job = render(cfg, tokenized_dir, out_dir)
    name = job["metadata"]["name"]
    kube = KubeJob(
        api if api is not None else api_client(),
        la.namespace,
        name,
        echo=echo,
        retry_base_s=min(RETRY_BASE_S, la.poll_s),  # tests poll fast; so may they retry
    )
    adopted = kube.submit(configmap, job)
    log_pod = f"{name}-worker-0" if is_elastic(cfg) else f"{name}-master-0"
    try:
        finished = kube.wait(la.timeout_s, la.poll_s, log_pod=log_pod)
    except BaseException:
        # The launcher's problem (API gone, its deadline, Ctrl-C), not the job's: a multi-day
        # run keeps going, and a retried step adopts it.
        echo(kube.inspect_hint())
        raise
    failure = kube.failure_reason(finished) if kube.state(finished) == "Failed" else None
    if la.delete_on_finish:
        kube.delete()
    if failure:
        raise LaunchError(failure)
    return _kubernetes_result(out_dir, kube, adopted)


def _kubernetes_result(out_dir: Path, kube: Any, adopted: bool) -> KubernetesPretrain:
    """The trainer's ``metrics.json`` where this process mounts the shared volume (a pipeline
    step), else the same result as the master printed it at its end (a workstation)."""
    extra = {"job": kube.name, "adopted": adopted}
    metrics = Path(out_dir) / "metrics.json"
    if metrics.exists():
        return KubernetesPretrain.from_metrics_file(metrics, **extra)
    summary = trainer_summary(list(kube.follower.tail) if kube.follower else [])
    try:
        return KubernetesPretrain.from_mapping(summary or {}, **extra)
    except KeyError:
        raise LaunchError(
            f"{kube.ref} succeeded, but its result is neither at {metrics} (this machine does not "
            "mount the shared volume there) nor in the master's log; read it on the volume "
            f"(launch.pvc_name, {out_dir}/metrics.json)"
        ) from None
