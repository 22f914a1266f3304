"""The pods a cluster makes of lmforge's objects, with the labels the operators add.

Each operator's part, read from its source at the version the README names:
- Deployment, StatefulSet: the pod template as written.
- PyTorchJob (Training Operator v1.9): one pod per replica, ``<job>-<type>-<index>``, labelled
  ``training.kubeflow.org/{operator-name,job-name,replica-type,replica-index}`` (and
  ``job-role: master`` on the master), the template's labels kept; a Worker of a job with a
  Master gets the operator's ``init-pytorch`` init container (pytorch/initcontainer.go), from
  the template the cluster configured, else the built-in one.
- TrainJob (Trainer v2.3.0, JobSet): the runtime's ``replicatedJobs[].template.spec.template``
  with the TrainJob's ``runtimePatches`` merged and its ``trainer`` set on the ``node`` container
  (which gets the Trainer's port 29500); only these pod-template labels reach pods (the
  TrainJob's and the runtime's own labels stay on the TrainJob and JobSet objects,
  pkg/runtime/core/trainingruntime.go), plus JobSet's and the Job controller's.
- InferenceService (KServe v0.20.0): the predictor pod, labelled with the InferenceService's
  labels plus ``serving.kserve.io/inferenceservice`` and ``component: predictor``
  (components/predictor.go); the model becomes ``kserve-container``; the storage initializer is
  the init container of the ClusterStorageContainer that downloads the URI; Knative (Serverless
  mode) adds its ``queue-proxy`` (serving pkg/reconciler/revision/resources/queue.go).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import yaml

TRAINER_PORT = 29500  # kubeflow/trainer v2.3.0 pkg/constants: ContainerTrainerPort
PREDICTOR_PORT = 8080  # KServe's kserve-container port (the Hugging Face runtime's)
# Training Operator v1.9.0 pkg/controller.v1/pytorch/initcontainer.go and pkg/config: no
# securityContext.
PYTORCH_INIT_TEMPLATE = """
- name: init-pytorch
  image: {{.InitContainerImage}}
  imagePullPolicy: IfNotPresent
  resources:
    limits: {cpu: 100m, memory: 20Mi}
    requests: {cpu: 50m, memory: 10Mi}
  command: ['sh', '-c', 'until nslookup {{.MasterAddr}}; do sleep 2; done']
"""
PYTORCH_INIT_IMAGE, PYTORCH_INIT_TRIES = "alpine:3.10", "100"
# KServe v0.20.0 config/storagecontainers/default.yaml: no securityContext.
KSERVE_DEFAULT_STORAGE = {
    "name": "storage-initializer",
    "image": "kserve/storage-initializer:v0.20.0",
    "resources": {"requests": {"memory": "100Mi", "cpu": "100m"}},
}
QUEUE_PROXY = {  # Knative Serving's queue-proxy sidecar: queueSecurityContext, its ports
    "name": "queue-proxy",
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "ports": [
        {"name": "http1", "containerPort": 8012},
        {"name": "queue-adm", "containerPort": 8022},
        {"name": "http-autometric", "containerPort": 9090},
        {"name": "http-usermetric", "containerPort": 9091},
    ],
}
ISVC_ONLY = {  # predictor fields that are not PodSpec fields
    "minReplicas",
    "maxReplicas",
    "scaleMetric",
    "scaleMetricType",
    "scaleTarget",
    "model",
    "storageContainerName",
    "storageUris",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "batcher",
    "logger",
    "labels",
    "annotations",
    "autoScaling",
    "deploymentStrategy",
    "workerSpec",
}


@dataclass
class Installed:
    """What the cluster's operators were set up with (by k8s/ or by default)."""

    runtimes: dict[str, dict[str, Any]]  # TrainingRuntimes by name
    storage_containers: list[dict[str, Any]]  # KServe ClusterStorageContainers
    pytorch_init_template: str = PYTORCH_INIT_TEMPLATE


@dataclass
class Pod:
    name: str
    namespace: str
    metadata: dict[str, Any]
    spec: dict[str, Any]

    @property
    def labels(self) -> dict[str, str]:
        return self.metadata.get("labels") or {}

    @property
    def ports(self) -> dict[str, int]:
        return {
            p["name"]: p["containerPort"]
            for c in self.spec.get("containers", [])
            for p in c.get("ports") or []
            if p.get("name")
        }


def _pod(name: str, ns: str, template: dict[str, Any], labels: dict[str, str]) -> Pod:
    meta = copy.deepcopy(template.get("metadata") or {})
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    return Pod(name, ns, meta, copy.deepcopy(template["spec"]))


# Strategic merge keys of the lists a runtime patch touches (a list item merges into the item
# with the same key, else is appended).
MERGE_KEYS = {"containers": "name", "volumes": "name", "env": "name", "volumeMounts": "mountPath"}


def _merge_list(base: list[dict], patch: list[dict], key: str) -> list[dict]:
    out = copy.deepcopy(base)
    for item in patch:
        mine = next((o for o in out if o.get(key) == item.get(key)), None)
        if mine is None:
            out.append(copy.deepcopy(item))
        else:
            _merge(mine, item)
    return out


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        elif key in MERGE_KEYS and isinstance(value, list):
            base[key] = _merge_list(base.get(key) or [], value, MERGE_KEYS[key])
        else:
            base[key] = copy.deepcopy(value)


def _pytorch_init(template: str, master: str) -> list[dict[str, Any]]:
    """The operator's Go template, filled in as GetInitContainer does."""
    for key, value in (
        ("InitContainerImage", PYTORCH_INIT_IMAGE),
        ("MasterAddr", master),
        ("MaxTries", PYTORCH_INIT_TRIES),
    ):
        template = template.replace("{{." + key + "}}", value)
    return yaml.safe_load(template)


def pytorchjob_pods(job: dict[str, Any], init_template: str) -> list[Pod]:
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    replicas = job["spec"]["pytorchReplicaSpecs"]
    pods = []
    for rtype, replica in replicas.items():
        for i in range(replica.get("replicas", 1)):
            labels = {
                "training.kubeflow.org/operator-name": "pytorchjob-controller",
                "training.kubeflow.org/job-name": name,
                "training.kubeflow.org/replica-type": rtype.lower(),
                "training.kubeflow.org/replica-index": str(i),
            }
            if rtype == "Master":
                labels["training.kubeflow.org/job-role"] = "master"
            pod = _pod(f"{name}-{rtype.lower()}-{i}", ns, replica["template"], labels)
            if rtype == "Worker" and "Master" in replicas:
                init = _pytorch_init(init_template, f"{name}-master-0")
                pod.spec["initContainers"] = [*pod.spec.get("initContainers", []), *init]
            pods.append(pod)
    return pods


def trainjob_pods(job: dict[str, Any], runtime: dict[str, Any]) -> list[Pod]:
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    jobset = copy.deepcopy(runtime["spec"]["template"]["spec"])
    for patch in job["spec"].get("runtimePatches") or []:
        patched = ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec")
        for rjob in (patched or {}).get("replicatedJobs", []):
            mine = next(r for r in jobset["replicatedJobs"] if r["name"] == rjob["name"])
            _merge(mine, rjob)
    trainer = job["spec"].get("trainer") or {}
    nodes = trainer.get("numNodes", runtime["spec"]["mlPolicy"].get("numNodes", 1))
    pods = []
    for rjob in jobset["replicatedJobs"]:
        template = rjob["template"]["spec"]["template"]
        for c in template["spec"]["containers"]:
            if c["name"] == "node":
                for key in ("image", "command", "args"):
                    if key in trainer:
                        c[key] = trainer[key]
                c["env"] = _merge_list(c.get("env") or [], trainer.get("env") or [], "name")
                if "resourcesPerNode" in trainer:
                    c["resources"] = trainer["resourcesPerNode"]
                c["ports"] = [*(c.get("ports") or []), {"containerPort": TRAINER_PORT}]
        for i in range(nodes if rjob["name"] == "node" else rjob.get("replicas", 1)):
            labels = {
                "jobset.sigs.k8s.io/jobset-name": name,
                "jobset.sigs.k8s.io/replicatedjob-name": rjob["name"],
                "jobset.sigs.k8s.io/job-index": str(i),
                "batch.kubernetes.io/job-name": f"{name}-{rjob['name']}-{i}",
                "batch.kubernetes.io/job-completion-index": "0",
            }
            pods.append(_pod(f"{name}-{rjob['name']}-{i}-0", ns, template, labels))
    return pods


def predictor_pod(isvc: dict[str, Any], storage_containers: list[dict[str, Any]]) -> Pod:
    meta, predictor = isvc["metadata"], isvc["spec"]["predictor"]
    model = predictor["model"]
    container = {
        "name": "kserve-container",
        "args": model.get("args", []),
        "resources": model.get("resources", {}),
        "ports": [{"name": "http", "containerPort": PREDICTOR_PORT}],
    }
    if "securityContext" in model:
        container["securityContext"] = model["securityContext"]
    spec = {k: v for k, v in predictor.items() if k not in ISVC_ONLY}
    spec["containers"] = [container, *(predictor.get("containers") or []), QUEUE_PROXY]
    uri = model.get("storageUri", "")
    if not uri.startswith("pvc://"):
        spec["initContainers"] = [storage_initializer(predictor, uri, storage_containers)]
    labels = {
        **(meta.get("labels") or {}),
        "serving.kserve.io/inferenceservice": meta["name"],
        "component": "predictor",
    }
    template = {"metadata": {"annotations": meta.get("annotations") or {}}, "spec": spec}
    return _pod(f"{meta['name']}-predictor", meta["namespace"], template, labels)


def storage_initializer(predictor: dict, uri: str, storage_containers: list[dict]) -> dict:
    """The container KServe injects: the named ClusterStorageContainer, else its default."""
    wanted = predictor.get("storageContainerName")
    if wanted is None:
        return KSERVE_DEFAULT_STORAGE
    (found,) = [s for s in storage_containers if s["metadata"]["name"] == wanted]
    prefixes = [f["prefix"] for f in found["spec"]["supportedUriFormats"] if "prefix" in f]
    assert any(uri.startswith(p) for p in prefixes), f"{wanted} does not download {uri}"
    return found["spec"]["container"]


def pods_of(obj: dict[str, Any], installed: Installed) -> list[Pod]:
    """Every pod ``obj`` makes (none for kinds that make no pods)."""
    kind, meta = obj["kind"], obj["metadata"]
    if kind in ("Deployment", "StatefulSet"):
        template = obj["spec"]["template"]
        return [_pod(f"{meta['name']}-0", meta["namespace"], template, {})]
    if kind == "PyTorchJob":
        return pytorchjob_pods(obj, installed.pytorch_init_template)
    if kind == "TrainJob":
        return trainjob_pods(obj, installed.runtimes[obj["spec"]["runtimeRef"]["name"]])
    if kind == "InferenceService":
        return [predictor_pod(obj, installed.storage_containers)]
    return []
