"""Render the pretraining PyTorchJob (Kubeflow Training Operator, ``kubeflow.org/v1``).

One spec for two places: the Kubernetes backend sends it to a cluster, the local runner executes
it as processes on this machine. Besides the job, a ConfigMap carries the resolved config
(``params.yaml``), mounted read-only into every replica and passed as ``--params``, so replicas
train with exactly the launcher's config.

Paths: the shared volume (a PVC, ``launch.pvc_name``) is mounted at ``launch.mount_path``; the
data and output folders are given relative to ``root`` (default: the working directory, which is
the project root under ``dvc repro``) and land at the same relative place on the volume.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from lmforge.config import Config
from lmforge.errors import LaunchError

API_VERSION = "kubeflow.org/v1"
CONTAINER = "pytorch"  # the operator looks for this container name ...
PORT_NAME = "pytorchjob-port"  # ... and this port name to set MASTER_PORT
PARAMS_DIR = "/etc/lmforge"
PARAMS_FILE = "params.yaml"
PARAMS_HASH_LABEL = "lmforge/params-hash"
# Pods and services are named <job>-worker-<i>: they must stay DNS-1035 labels (63 chars).
MAX_JOB_NAME = 45
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def job_name(base: str, run_name: str = "") -> str:
    """A valid DNS-1035 label (hence DNS-1123) for any base and run name.

    Lower-cased, invalid characters folded to ``-``; when that changed or truncated anything, a
    hash of the original is appended so two different run names never share a job.
    """
    raw = f"{base}-{run_name}" if run_name else base
    name = re.sub(r"[^a-z0-9-]+", "-", raw.lower())
    name = re.sub(r"-{2,}", "-", name).strip("-")
    if not name or not name[0].isalpha():
        name = f"job-{name}".rstrip("-")
    if name == raw and len(name) <= MAX_JOB_NAME:
        return name
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"{name[: MAX_JOB_NAME - 9].rstrip('-')}-{digest}"


def is_valid_job_name(name: str) -> bool:
    return len(name) <= MAX_JOB_NAME and bool(_DNS1035.match(name))


def volume_path(path: Path, root: Path, mount_path: str) -> str:
    """Where ``path`` (a local folder under ``root``) is inside a replica."""
    path = Path(path)
    if not path.is_absolute():  # relative to the working directory, like every CLI path
        path = Path.cwd() / path
    if str(path).startswith(mount_path.rstrip("/") + "/"):
        return str(path)  # already a path on the volume (a step running in the cluster)
    try:
        rel = path.resolve().relative_to(Path(root).resolve())
    except ValueError:
        raise LaunchError(
            f"{path}: the PyTorchJob's replicas only see the shared volume; put the folder under "
            f"{root} (mapped to launch.mount_path={mount_path}) or pass a relative path"
        ) from None
    return str(PurePosixPath(mount_path) / rel.as_posix())


def is_elastic(cfg: Config) -> bool:
    return cfg.launch.elastic_min_nodes is not None


def _command(cfg: Config, data: str, out: str) -> list[str]:
    """What each replica's container runs: the inline trainer, under torchrun when needed.

    torchrun reads PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR/PORT (or
    PET_RDZV_* when elastic) that the operator sets; one process per pod needs no torchrun.
    """
    step = [
        "pretrain",
        "--backend",
        "inline",
        "--data",
        data,
        "--out",
        out,
        "--params",
        f"{PARAMS_DIR}/{PARAMS_FILE}",
    ]
    if cfg.launch.nproc_per_node > 1 or is_elastic(cfg):
        return ["torchrun", "--no-python", "lmforge", *step]
    return ["lmforge", *step]


def env_vars(cfg: Config, run_id: str) -> list[dict[str, str]]:
    """The trainer's environment, the same for both APIs: lmforge's, then ``launch.env``."""
    env = {
        "LMFORGE_PIPELINE_RUN_ID": run_id,  # MLflow runs join one parent
        "NCCL_DEBUG": cfg.launch.nccl_debug,
        "NCCL_ASYNC_ERROR_HANDLING": "1",  # a dead peer fails, not hangs
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    } | dict(cfg.launch.env)
    return [{"name": k, "value": v} for k, v in env.items()]


def pod_labels(cfg: Config) -> dict[str, str]:
    """The labels every training pod carries, whatever the API: the NetworkPolicy
    ``pretrain-peers`` (k8s/base/networkpolicy.yaml) lets pods with them reach each other."""
    return {k: v for k, v in _labels(cfg).items() if k != PARAMS_HASH_LABEL}


def _container(cfg: Config, data: str, out: str, run_id: str) -> dict[str, Any]:
    la = cfg.launch
    resources: dict[str, dict[str, Any]] = {
        "requests": {"cpu": la.cpu, "memory": la.memory},
        "limits": {"cpu": la.cpu, "memory": la.memory},
    }
    if la.gpus_per_node:
        resources["requests"]["nvidia.com/gpu"] = la.gpus_per_node
        resources["limits"]["nvidia.com/gpu"] = la.gpus_per_node
    command = _command(cfg, data, out)
    return {
        "name": CONTAINER,
        "image": la.image,
        "imagePullPolicy": "IfNotPresent",
        "command": command[:1],
        "args": command[1:],
        "env": env_vars(cfg, run_id),
        # MLflow server and credentials, from the Secret the k8s base defines (never inlined).
        "envFrom": [{"secretRef": {"name": cfg.kubeflow.mlflow_secret, "optional": True}}],
        "ports": [{"name": PORT_NAME, "containerPort": la.master_port, "protocol": "TCP"}],
        "resources": resources,
        "volumeMounts": [
            {"name": "work", "mountPath": la.mount_path},
            {"name": "params", "mountPath": PARAMS_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def _pod_template(cfg: Config, name: str, data: str, out: str, run_id: str) -> dict[str, Any]:
    la = cfg.launch
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # replicas never call the API
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(cfg, data, out, run_id)],
        "volumes": [
            {"name": "work", "persistentVolumeClaim": {"claimName": la.pvc_name}},
            {"name": "params", "configMap": {"name": params_configmap_name(name)}},
            # NCCL and DataLoader workers use shared memory; the container default is 64 MiB.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": la.shm_size}},
        ],
    }
    if la.node_selector:
        spec["nodeSelector"] = dict(la.node_selector)
    if la.tolerations:
        spec["tolerations"] = [dict(t) for t in la.tolerations]
    return {
        "metadata": {
            "labels": pod_labels(cfg),
            # Kubeflow's Istio sidecar would hold pods open and intercept the rendezvous port.
            "annotations": {"sidecar.istio.io/inject": "false"},
        },
        "spec": spec,
    }


def _labels(cfg: Config) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "lmforge",
        "app.kubernetes.io/component": "pretrain",
        PARAMS_HASH_LABEL: cfg.params_hash(),
    }


def params_configmap_name(job: str) -> str:
    return f"{job}-params"


@dataclass(frozen=True)
class JobFrame:
    """What every job kind derives from the config alike: its name, the run it belongs to, the
    data and output folders as seen on the volume, its metadata, and the params ConfigMap."""

    name: str
    run_id: str
    data: str
    out: str
    meta: dict[str, Any]
    configmap: dict[str, Any]


def job_frame(
    cfg: Config,
    tokenized_dir: Path,
    out_dir: Path,
    root: Path | None,
    run_name: str | None,
) -> JobFrame:
    from lmforge.tracking import pipeline_run_id

    # Launch settings are checked where the section is defined (LaunchConfig.check).
    la = cfg.launch
    run_id = run_name if run_name is not None else pipeline_run_id(cfg)
    name = job_name(la.job_name, run_id)
    root = Path(root) if root is not None else Path.cwd()
    meta = {"name": name, "namespace": la.namespace, "labels": _labels(cfg)}
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {**meta, "name": params_configmap_name(name)},
        "data": {PARAMS_FILE: yaml.safe_dump(cfg.to_dict(), sort_keys=False)},
    }
    data = volume_path(tokenized_dir, root, la.mount_path)
    out = volume_path(out_dir, root, la.mount_path)
    return JobFrame(name, run_id, data, out, meta, configmap)


def render(
    cfg: Config,
    tokenized_dir: Path,
    out_dir: Path,
    *,
    root: Path | None = None,
    run_name: str | None = None,
) -> list[dict[str, Any]]:
    """The ConfigMap with the resolved config, and the PyTorchJob that mounts it."""
    la = cfg.launch
    frame = job_frame(cfg, tokenized_dir, out_dir, root, run_name)
    template = _pod_template(cfg, frame.name, frame.data, frame.out, frame.run_id)
    replica = {"restartPolicy": la.restart_policy, "template": template}
    if is_elastic(cfg):
        # Elastic: workers only; torchrun's c10d rendezvous runs on <job>-worker-0.
        replicas = {"Worker": {"replicas": la.nnodes, **replica}}
    else:
        replicas = {"Master": {"replicas": 1, **replica}}
        if la.nnodes > 1:
            replicas["Worker"] = {"replicas": la.nnodes - 1, **replica}
    spec: dict[str, Any] = {
        "nprocPerNode": str(la.nproc_per_node),
        "pytorchReplicaSpecs": replicas,
        "runPolicy": {
            "backoffLimit": la.backoff_limit,
            "activeDeadlineSeconds": la.timeout_s,
            "cleanPodPolicy": "None",  # keep finished pods so their logs can be read
        },
    }
    if is_elastic(cfg):
        spec["elasticPolicy"] = {
            "minReplicas": la.elastic_min_nodes,
            "maxReplicas": la.elastic_max_nodes,
            "rdzvBackend": "c10d",
            "maxRestarts": la.backoff_limit,
        }
    job = {"apiVersion": API_VERSION, "kind": "PyTorchJob", "metadata": frame.meta, "spec": spec}
    return [frame.configmap, job]


class _ManifestDumper(yaml.SafeDumper):
    """Plain YAML for people and kubectl: no anchors, multi-line strings as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ManifestDumper.add_representer(str, _str)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.dump_all(objects, Dumper=_ManifestDumper, sort_keys=False)


def render_yaml(cfg: Config, tokenized_dir: Path, out_dir: Path) -> str:
    """The manifests ``lmforge pretrain --render`` prints (``kubectl apply -f -`` ready)."""
    return to_yaml(render(cfg, tokenized_dir, out_dir))


if __name__ == "__main__":  # `make k8s-jobs`: the PyTorchJob of k8s/<env>/params.yaml
    import sys

    from lmforge.config import load_config

    _cfg = load_config(sys.argv[1])
    _, _job = render(
        _cfg,
        Path("outputs/tokenized"),
        Path("outputs/pretrain"),
        root=Path.cwd(),
        run_name="template",
    )
    del _job["metadata"]["labels"][PARAMS_HASH_LABEL]  # the hash of every default: churns
    print(to_yaml([_job]), end="")
