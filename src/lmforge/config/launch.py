"""Config of launching pretraining (``launch``) and of Kubeflow Pipelines (``kubeflow``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from lmforge.config.schema import Section, setting

PIPELINE_STEPS = ("validate", "augment", "tokenize", "pretrain", "finetune", "evaluate", "register")
_RFC1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")  # a DNS-1123 subdomain
# TrainJob restarts are JobSet restarts (all nodes at once); a pod's own policy is a Job's.
TRAINJOB_RESTART_POLICIES = ("OnFailure", "Never")


@dataclass
class LaunchConfig(Section):
    """How pretraining is launched: a Kubeflow PyTorchJob or TrainJob, on a cluster or locally."""

    name = "launch"

    api: Literal["pytorchjob", "trainjob"] = setting(
        "trainjob",
        "trainjob: Kubeflow Trainer v2.x (trainer.kubeflow.org/v1alpha1 TrainJob on "
        "launch.runtime); pytorchjob: Training Operator v1.9 (kubeflow.org/v1 PyTorchJob, "
        "maintenance only upstream; elastic training).",
    )
    runtime: str = setting(
        "lmforge-torch",
        "TrainJob: the runtime it references (k8s/components/trainer; or the stock "
        "ClusterTrainingRuntime torch-distributed with runtime_kind ClusterTrainingRuntime).",
    )
    runtime_kind: Literal["TrainingRuntime", "ClusterTrainingRuntime"] = setting(
        "TrainingRuntime", "TrainJob: kind of launch.runtime (namespaced or cluster-wide)."
    )
    env: dict[str, str] = setting(
        {},
        "Extra env of the trainer container, both APIs (never PET_*: the Trainer sets those).",
    )

    backend: Literal["local", "kubernetes", "inline"] = setting(
        "local",
        "local: the job's spec (either API) on local processes; kubernetes: on the cluster; "
        "inline: train in this process.",
    )
    job_name: str = setting(
        "lmforge-pretrain",
        "Base of the job's name (folded into an RFC 1035 label with the run id).",
    )
    namespace: str = setting("lmforge", "Namespace of the job; the pipeline's pods' namespace.")
    image: str = setting("ghcr.io/lmforge/lmforge:0.1.0", "Container image of the replicas.")
    nnodes: int = setting(2, "Pods (nodes); a PyTorchJob's: Master + (nnodes - 1) Workers.", ge=1)
    nproc_per_node: int = setting(1, "Processes per pod (= GPUs per node on GPU pools).", ge=1)
    gpus_per_node: int = setting(0, "GPUs requested per pod; 0 on CPU.", ge=0)
    elastic_min_nodes: int | None = setting(
        None, "Elastic policy: fewest pods (set both elastic keys, or neither).", ge=1
    )
    elastic_max_nodes: int | None = setting(None, "Elastic policy: most pods.", ge=1)
    restart_policy: Literal["OnFailure", "Never", "Always", "ExitCode"] = setting(
        "OnFailure", "The replicas' restart policy."
    )
    backoff_limit: int = setting(3, "Restarts (across replicas) before the job fails.", ge=0)
    cpu: str = setting("1", "CPU request and limit per pod (Kubernetes quantity).")
    memory: str = setting("4Gi", "Memory request and limit per pod.")
    shm_size: str = setting("2Gi", "Size of /dev/shm (DataLoader workers, NCCL).")
    node_selector: dict[str, str] = setting({}, "Node labels the pods must match.")
    tolerations: list[dict[str, str]] = setting([], "Tolerations of the pods.")
    pvc_name: str = setting("lmforge-work", "The shared volume for data, checkpoints, model.")
    mount_path: str = setting("/mnt/lmforge", "Where the shared volume is mounted in the pods.")
    timeout_s: int = setting(6 * 3600, "The job's deadline (activeDeadlineSeconds).", ge=1)
    delete_on_finish: bool = setting(True, "Delete the job once it has ended and been collected.")
    nccl_debug: str = setting("WARN", "NCCL_DEBUG of the replicas.")
    master_port: int = setting(
        23456,
        "The container port named pytorchjob-port (local runner: a free one).",
        ge=1,
        le=65535,
    )
    peer_timeout_s: int = setting(
        120,
        "Local runner: a peer of a dead replica that stays silent this long is stopped and "
        "restarted too, as a cluster's NCCL timeout would.",
        ge=1,
    )
    poll_s: float = setting(5.0, "Kubernetes backend: seconds between job status reads.", gt=0)

    def check(self) -> None:
        pet = sorted(k for k in self.env if k.startswith("PET_"))
        if pet:
            self.fail(
                "env",
                f"{pet[0]} is set by the training operator (torchrun reads it from there): "
                "remove it from launch.env; nnodes and nproc_per_node are launch.* keys",
            )
        if self.api == "trainjob":
            self._check_trainjob()
        if self.gpus_per_node and self.nproc_per_node != self.gpus_per_node:
            self.fail(
                "nproc_per_node",
                f"{self.nproc_per_node} but launch.gpus_per_node={self.gpus_per_node}: one "
                "process per GPU; set both to the same number",
            )
        low, high = self.elastic_min_nodes, self.elastic_max_nodes
        if (low is None) != (high is None):
            self.fail(
                "elastic_min_nodes", "set both elastic_min_nodes and elastic_max_nodes, or neither"
            )
        if low is not None and high is not None and not low <= self.nnodes <= high:
            self.fail(
                "nnodes",
                f"elastic_min_nodes={low} <= nnodes={self.nnodes} <= elastic_max_nodes={high} "
                "must hold",
            )

    def _check_trainjob(self) -> None:
        for key in ("elastic_min_nodes", "elastic_max_nodes"):
            if getattr(self, key) is not None:
                self.fail(
                    key,
                    "Kubeflow Trainer v2 has no elastic training (v2.2 removed ElasticPolicy): "
                    "remove it, or use launch.api=pytorchjob",
                )
        if self.restart_policy not in TRAINJOB_RESTART_POLICIES:
            self.fail(
                "restart_policy",
                f"{self.restart_policy!r} with launch.api=trainjob: a TrainJob restarts all its "
                "nodes together (JobSet failurePolicy); use OnFailure or Never",
            )
        for key in ("runtime", "namespace", "pvc_name"):
            value = getattr(self, key)
            if len(value) > 63 or not _RFC1035.match(value):
                self.fail(
                    key,
                    f"{value!r} is not an RFC 1035 label (lower-case letters, digits and '-', "
                    "starting with a letter, at most 63 characters)",
                )


@dataclass
class KubeflowConfig(Section):
    """Kubeflow Pipelines: image, caching, GPU scheduling, submission."""

    name = "kubeflow"

    image: str = setting("ghcr.io/lmforge/lmforge:0.1.0", "Image of every pipeline step.")
    host: str = setting("", "Kubeflow Pipelines API URL (or pass --host).")
    namespace: str = setting("kubeflow", "Namespace of the pipeline runs.")
    service_account: str = setting(
        "lmforge-pipeline",
        "ServiceAccount the pipeline runs' pods use (k8s/pipeline), set on the run at submission.",
    )
    experiment: str = setting("lmforge", "KFP experiment the runs go to.")
    pipeline_prefix: str = setting("lmforge", "Uploaded pipelines are named PREFIX-NAME.")
    cache_heavy_steps: bool = setting(False, "Let KFP cache pretrain, finetune and evaluate.")
    gpu_node_selector: dict[str, str] = setting(
        {"nvidia.com/gpu.present": "true"}, "Node labels of GPU steps."
    )
    gpu_toleration_key: str = setting("nvidia.com/gpu", "Taint the GPU steps tolerate.")
    gpu_steps: list[str] = setting(["finetune", "evaluate"], "Pipeline steps that get GPUs.")
    gpus_per_step: int = setting(1, "GPUs per GPU step.", ge=0)
    mlflow_secret: str = setting(
        "lmforge-mlflow", "Secret whose keys become the env of every step (MLflow server, auth)."
    )
    mlflow_secret_keys: list[str] = setting(
        ["MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"],
        "Keys of that secret passed to the steps.",
    )
    data_uri: str = setting(
        "minio://mlpipeline/lmforge/data", "Pipeline input: the DVC-tracked raw data's URI."
    )
    pretrained_uri: str = setting(
        "minio://mlpipeline/lmforge/pretrain", "Finetune pipeline input: a pretrain run's Model."
    )
    tokenized_uri: str = setting(
        "minio://mlpipeline/lmforge/tokenized", "Finetune pipeline input: its tokenized Dataset."
    )
    pretrain_backend: Literal["kubernetes", "local"] = setting(
        "kubernetes", "Where the pipeline's pretrain step trains: a PyTorchJob, or in its pod."
    )
    deploy: bool = setting(
        False,
        "Full pipeline: after registering, promote and deploy the champions to KServe "
        "(serve section).",
    )

    def check(self) -> None:
        unknown = sorted(set(self.gpu_steps) - set(PIPELINE_STEPS))
        if unknown:
            self.fail(
                "gpu_steps", f"unknown step {unknown[0]!r}; steps: {', '.join(PIPELINE_STEPS)}"
            )
        if len(self.service_account) > 253 or not _DNS1123.match(self.service_account):
            self.fail(
                "service_account",
                f"{self.service_account!r} is not a ServiceAccount name (lower-case letters, "
                "digits, '-' and '.', starting and ending with a letter or digit)",
            )
