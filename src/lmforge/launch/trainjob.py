"""Render pretraining as a Kubeflow Trainer v2 TrainJob (``trainer.kubeflow.org/v1alpha1``).

The v2 split: a ``TrainingRuntime`` (``render_runtime``; committed as
``k8s/components/trainer/``) holds what every run shares (the JobSet of ``node`` pods, the
shared volume, ``/dev/shm``, the security context, the restart policy), and each run's
``TrainJob`` (``render``) names it and adds the image, the command, the node count and size, and,
through ``runtimePatches``, the run's params ConfigMap and scheduling. The same ConfigMap as the
PyTorchJob path carries the resolved config, mounted at ``/etc/lmforge``.

The Trainer injects only ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``,
``PET_MASTER_ADDR`` and ``PET_MASTER_PORT`` into the ``node`` container, so the entry point is
always ``torchrun --no-python lmforge pretrain ...``: torchrun turns them into the RANK,
WORLD_SIZE, MASTER_ADDR/PORT that ``lmforge.train.distributed`` reads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.errors import LaunchError
from lmforge.launch.pytorchjob import (
    PARAMS_DIR,
    PARAMS_FILE,
    PARAMS_HASH_LABEL,
    env_vars,
    job_frame,
    params_configmap_name,
    pod_labels,
    to_yaml,
)

GROUP, VERSION = "trainer.kubeflow.org", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
PLURAL = "trainjobs"
CONTAINER = "node"  # the Trainer's trainer container (it injects PET_* there only) ...
REPLICATED_JOB = "node"  # ... in the replicated job of the same name
PATCH_MANAGER = "lmforge.launch"  # owner of the runtimePatches entry the launcher writes
# The Trainer finds the trainer step of a runtime by this label of the replicated job.
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"  # on every pod; the JobSet is named as the job
_RFC1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def node_pod(name: str, rank: int = 0) -> str:
    """The stable prefix of node ``rank``'s pod: ``<jobset>-<replicatedJob>-<job index>-0``."""
    return f"{name}-{REPLICATED_JOB}-{rank}-0"


def command(data: str, out: str) -> list[str]:
    """torchrun reads the PET_* variables the Trainer sets; it then sets what lmforge reads."""
    step = ["pretrain", "--backend", "inline", "--data", data, "--out", out]
    return ["torchrun", "--no-python", "lmforge", *step, "--params", f"{PARAMS_DIR}/{PARAMS_FILE}"]


def _resources(cfg: Config) -> dict[str, dict[str, str]]:
    la = cfg.launch
    amounts = {"cpu": la.cpu, "memory": la.memory}
    if la.gpus_per_node:
        amounts["nvidia.com/gpu"] = str(la.gpus_per_node)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _pod_patch(cfg: Config, name: str) -> dict[str, Any]:
    """What differs per run in the runtime's pod: its params ConfigMap, where it schedules."""
    la = cfg.launch
    spec: dict[str, Any] = {
        "volumes": [{"name": "params", "configMap": {"name": params_configmap_name(name)}}],
        "containers": [
            {
                "name": CONTAINER,
                "volumeMounts": [{"name": "params", "mountPath": PARAMS_DIR, "readOnly": True}],
            }
        ],
    }
    if la.node_selector:
        spec["nodeSelector"] = dict(la.node_selector)
    if la.tolerations:
        spec["tolerations"] = [dict(t) for t in la.tolerations]
    job = {"name": REPLICATED_JOB, "template": {"spec": {"template": {"spec": spec}}}}
    return {
        "manager": PATCH_MANAGER,
        "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [job]}}},
    }


def render(
    cfg: Config,
    tokenized_dir: Path,
    out_dir: Path,
    *,
    root: Path | None = None,
    run_name: str | None = None,
) -> list[dict[str, Any]]:
    """The ConfigMap with the resolved config, and the TrainJob that mounts it (validated)."""
    la = cfg.launch
    frame = job_frame(cfg, tokenized_dir, out_dir, root, run_name)
    name, run_id, meta, configmap = frame.name, frame.run_id, frame.meta, frame.configmap
    argv = command(frame.data, frame.out)
    trainer = {
        "image": la.image,
        "command": argv[:1],
        "args": argv[1:],
        "env": env_vars(cfg, run_id),
        "numNodes": la.nnodes,
        "numProcPerNode": la.nproc_per_node,
        "resourcesPerNode": _resources(cfg),
    }
    spec = {
        "runtimeRef": {"apiGroup": GROUP, "kind": la.runtime_kind, "name": la.runtime},
        "trainer": trainer,
        "runtimePatches": [_pod_patch(cfg, name)],
        "activeDeadlineSeconds": la.timeout_s,
    }
    job = {"apiVersion": API_VERSION, "kind": "TrainJob", "metadata": meta, "spec": spec}
    check(job)
    return [configmap, job]


def render_runtime(cfg: Config) -> dict[str, Any]:
    """lmforge's namespaced TrainingRuntime: the JobSet every lmforge TrainJob runs as.

    A failed node fails its Job (``backoffLimit: 0``, pods ``restartPolicy: Never``), and the
    JobSet restarts every node together (``failurePolicy.maxRestarts``): a torch world cannot
    take back one lost member, and the new world resumes from the last checkpoint.
    """
    la = cfg.launch
    restarts = la.backoff_limit if la.restart_policy == "OnFailure" else 0
    container = {
        "name": CONTAINER,
        "image": la.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["torchrun"],  # every TrainJob sets its own command and args
        # MLflow server and credentials, from the Secret the k8s base expects (never inlined).
        "envFrom": [{"secretRef": {"name": cfg.kubeflow.mlflow_secret, "optional": True}}],
        "resources": _resources(cfg),
        "volumeMounts": [
            {"name": "work", "mountPath": la.mount_path},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    pod = {
        # The Trainer copies neither the TrainJob's nor the runtime's labels to pods: only these
        # (and JobSet's own) reach them, and the NetworkPolicies select pods by them.
        "metadata": {
            "labels": pod_labels(cfg),
            "annotations": {"sidecar.istio.io/inject": "false"},
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,  # nodes never call the API
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "runAsGroup": 1000,
                "fsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": [
                {"name": "work", "persistentVolumeClaim": {"claimName": la.pvc_name}},
                # NCCL and DataLoader workers use shared memory; the container default is 64 MiB.
                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": la.shm_size}},
            ],
        },
    }
    node = {
        "name": REPLICATED_JOB,
        "replicas": 1,
        "template": {
            "metadata": {"labels": {ANCESTOR_LABEL: "trainer"}},
            "spec": {"backoffLimit": 0, "template": pod},
        },
    }
    labels = pod_labels(cfg)
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingRuntime",
        "metadata": {
            "name": la.runtime,
            "namespace": la.namespace,
            "labels": {**labels, "trainer.kubeflow.org/framework": "torch"},
        },
        "spec": {
            "mlPolicy": {"numNodes": la.nnodes, "torch": {}},
            "template": {
                "spec": {
                    "failurePolicy": {"maxRestarts": restarts},
                    "replicatedJobs": [node],
                }
            },
        },
    }


def check(job: dict[str, Any]) -> None:
    """What the API would refuse, said before sending: the name rules of the CRD, and every
    field known to the Trainer's models (``from_dict(x).to_dict() == x``; a misspelt field is
    dropped by them, so the round trip differs)."""
    name = job["metadata"]["name"]
    if len(name) > 63 or not _RFC1035.match(name):
        raise LaunchError(
            f"TrainJob name {name!r} is not an RFC 1035 label of at most 63 characters; "
            "set launch.job_name to lower-case letters, digits and '-'"
        )
    env = [e["name"] for e in job["spec"].get("trainer", {}).get("env", [])]
    pet = [n for n in env if n.startswith("PET_")]
    if pet:
        raise LaunchError(f"TrainJob {name}: trainer.env sets {pet[0]}; the Trainer sets PET_*")
    model = _model(job["kind"])
    if model.from_dict(job).to_dict() != job:
        raise LaunchError(
            f"{job['kind']} {name}: fields unknown to the kubeflow-trainer-api models "
            "(a misspelt key?); `lmforge pretrain --render` prints the manifest"
        )


def _model(kind: str):
    from kubeflow_trainer_api import models

    return {
        "TrainJob": models.TrainerV1alpha1TrainJob,
        "TrainingRuntime": models.TrainerV1alpha1TrainingRuntime,
    }[kind]


def render_yaml(cfg: Config, tokenized_dir: Path, out_dir: Path) -> str:
    """The manifests ``lmforge pretrain --render`` prints with ``launch.api=trainjob``."""
    return to_yaml(render(cfg, tokenized_dir, out_dir))


if __name__ == "__main__":  # `make k8s-jobs`: the runtime / TrainJob of k8s/<env>/params.yaml
    import sys

    from lmforge.config import load_config

    _cfg = load_config(sys.argv[2], ["launch.api=trainjob"])
    if sys.argv[1] == "runtime":
        print(to_yaml([render_runtime(_cfg)]), end="")
    else:
        _, _job = render(
            _cfg,
            Path("outputs/tokenized"),
            Path("outputs/pretrain"),
            root=Path.cwd(),
            run_name="template",
        )
        del _job["metadata"]["labels"][PARAMS_HASH_LABEL]  # the hash of every default: churns
        print(to_yaml([_job]), end="")
