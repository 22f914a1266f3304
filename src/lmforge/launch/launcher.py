"""``launch_pretrain``: pretraining as a Kubeflow PyTorchJob, on a cluster or on local processes.

Both backends run the manifests ``pytorchjob.render`` produces; each replica runs
``lmforge pretrain --backend inline`` and writes the folder layout of
``lmforge.train.pretrain.pretrain`` (``model/``, ``checkpoints/``, ``metrics.json``,
``plots/loss.csv``) under ``out_dir`` on the shared volume.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.errors import LaunchError
from lmforge.launch.pytorchjob import is_elastic, render


def _root(tokenized_dir: Path, out_dir: Path) -> Path:
    """The local folder the shared volume stands for: the working directory when it holds both
    folders (so paths on the volume match a cluster's), else their closest common folder."""
    cwd = Path.cwd().resolve()
    paths = [Path(tokenized_dir).resolve(), Path(out_dir).resolve()]
    if all(p.is_relative_to(cwd) for p in paths):
        return cwd
    return Path(os.path.commonpath(paths))


def _metrics(out_dir: Path) -> dict[str, Any]:
    path = Path(out_dir) / "metrics.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def launch_pretrain(
    cfg: Config, tokenized_dir: Path, out_dir: Path, backend: str = "local", **options: Any
) -> dict[str, Any]:
    """Run the PyTorchJob to completion; return the trainer's metrics plus the job's name.

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


def _launch_local(cfg: Config, tokenized_dir: Path, out_dir: Path, **kwargs: Any) -> dict[str, Any]:
    from lmforge.launch.local_runner import LocalRunner

    if not (tokenized_dir / "blocks").is_dir():
        raise LaunchError(
            f"{tokenized_dir}/blocks: no packed blocks to pretrain on; run `lmforge tokenize` "
            "(or `dvc repro tokenize`) first"
        )
    root = _root(tokenized_dir, out_dir)
    configmap, job = render(cfg, tokenized_dir, out_dir, root=root)
    runner = LocalRunner(
        job,
        volumes={cfg.launch.pvc_name: root},
        configmaps=[configmap],
        timeout_s=cfg.launch.timeout_s,
        peer_timeout_s=cfg.launch.peer_timeout_s,
        **kwargs,
    )
    job_result = runner.run()
    return {**_metrics(out_dir), **job_result, "backend": "local"}


def _launch_kubernetes(
    cfg: Config, tokenized_dir: Path, out_dir: Path, api: Any = None, echo: Any = print
) -> dict[str, Any]:
    from lmforge.launch.kube import KubeJob, api_client

    la = cfg.launch
    configmap, job = render(cfg, tokenized_dir, out_dir)
    name = job["metadata"]["name"]
    kube = KubeJob(api if api is not None else api_client(), la.namespace, name, echo=echo)
    adopted = kube.submit(configmap, job)
    log_pod = f"{name}-worker-0" if is_elastic(cfg) else f"{name}-master-0"
    try:
        kube.wait(la.timeout_s, la.poll_s, log_pod=log_pod)
    finally:
        if la.delete_on_finish:
            kube.delete()
    # A step that mounts the shared volume at the same path sees the trainer's metrics.
    return {**_metrics(out_dir), "job": name, "adopted": adopted, "backend": "kubernetes"}
