"""The KServe ``InferenceService`` of a registry alias: what ``lmforge deploy --render`` prints.

KServe cannot read ``models:/`` URIs (kserve#3555), so the alias is resolved here, once: alias
-> version -> the version's artifact location as MLflow stores it (``s3://``, ``gs://``, a path
on a PVC...), rewritten by ``serve.storage_prefixes`` where KServe's storage initializer could
not read it (the MLflow server's proxied ``mlflow-artifacts:/``). The transformers flavour keeps
the weights, config and tokenizer in the version's ``model/`` folder: exactly what the Hugging
Face runtime loads.

One kind for both models, ``InferenceService`` (``serving.kserve.io/v1beta1``) on the Hugging
Face runtime: ``LLMInferenceService`` (v1alpha) is built for vLLM on GPUs behind the Gateway API
and the inference scheduler (llm-d), none of which a CPU-sized decoder needs; the Hugging Face
server serves it with its ``huggingface`` backend (OpenAI-style completions) on CPU or GPU.

The manifest is a pure function of the registry's state and the ``serve`` section: no
timestamps, sorted keys, so rendering twice gives the same bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lmforge.config import Config
from lmforge.config.serve import KSERVE_SCHEMES
from lmforge.errors import RegistryError

API_VERSION = "serving.kserve.io/v1beta1"
GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
ANNOTATION = "lmforge.io/"
# Where a version came from (``lmforge.lineage.version_lineage``: the training run's tags, the
# LoggedModel; a version registered before that: its own tags); promoted_at is left out:
# it changes on every promotion and would make two renders of the same version differ.
LINEAGE_TAGS = (
    "lmforge.git_commit",
    "lmforge.data_version",
    "lmforge.params_hash",
    "lmforge.pipeline_run_id",
    "lmforge.parent_run_id",
    "lmforge.run_id",
    "lmforge.model_id",
)
METRIC_PREFIX = "lmforge.metric."
# MLflow's transformers task -> the Hugging Face server's --task.
HF_TASKS = {"text-generation": "text_generation", "text-classification": "sequence_classification"}
# k8s/kserve/storagecontainer.yaml: KServe's storage initializer with a securityContext that
# passes Pod Security "restricted" (KServe's default one has none), for the URIs it downloads.
STORAGE_CONTAINER = "lmforge-storage-initializer"
STORAGE_CONTAINER_SCHEMES = ("s3://", "gs://", "https://", "hdfs://", "webhdfs://")
MAX_NAME = 45  # KServe derives "<name>-predictor-<hash>" names that must stay <= 63 characters


@dataclass
class Served:
    """A registered version resolved for serving."""

    name: str  # registered model
    version: str
    alias: str
    artifact_location: str  # as MLflow stores it
    storage_uri: str  # what KServe reads: artifact_location (rewritten) + /model
    task: str  # MLflow's transformers task
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def service_name(self) -> str:
        return service_name(self.name)


def service_name(model: str) -> str:
    """An RFC 1035 label from a registered model name (``lmforge-lm`` stays ``lmforge-lm``)."""
    label = re.sub(r"[^a-z0-9-]+", "-", model.lower()).strip("-")
    label = re.sub(r"^[^a-z]+", "", label)[:MAX_NAME].rstrip("-")
    if not label:
        raise RegistryError(f"model {model!r}: no valid InferenceService name can be made of it")
    return label


def storage_uri(cfg: Config, location: str, what: str) -> str:
    """``location`` as KServe's storage initializer can read it (``serve.storage_prefixes``)."""
    for prefix, target in sorted(cfg.serve.storage_prefixes.items(), key=lambda kv: -len(kv[0])):
        if location.startswith(prefix):
            location = target + location[len(prefix) :].lstrip("/")
            break
    if not location.startswith(KSERVE_SCHEMES):
        raise RegistryError(
            f"{what}: its artifacts are at {location}, which KServe cannot read (it reads "
            f"{', '.join(KSERVE_SCHEMES)}); map that prefix with serve.storage_prefixes, e.g. "
            '--set \'serve.storage_prefixes={"file:///mnt/lmforge/": "pvc://lmforge-work/"}\''
        )
    return location.rstrip("/") + "/model"


def _task(client, location: str, what: str) -> str:
    import mlflow
    import yaml

    try:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location.rstrip('/')}/MLmodel", tracking_uri=client.tracking_uri
        )
        with open(path) as fh:
            flavor = (yaml.safe_load(fh) or {}).get("flavors", {}).get("transformers") or {}
    except Exception as exc:  # any failure to read it: one message
        raise RegistryError(f"{what}: its MLmodel file is unreadable ({exc})") from None
    task = flavor.get("task")
    if task not in HF_TASKS:
        raise RegistryError(
            f"{what}: task {task!r}; the Hugging Face runtime serves {', '.join(HF_TASKS)} "
            "(a model registered by lmforge register)"
        )
    return task


def resolve(cfg: Config, client, name: str, alias: str) -> Served:
    """The version under ``alias`` with its artifact location, task and tags."""
    from lmforge.registry.aliases import check_model, find_alias
    from lmforge.registry.loading import check_version
    from lmforge.registry.provenance import version_lineage

    check_model(client, name)
    found = find_alias(client, name, alias)
    if found is None:
        raise RegistryError(
            f"model {name} has no {alias!r} version to deploy; run `lmforge promote --model "
            f"{name}` first"
        )
    version = str(found.version)
    what = f"models:/{name}/{version}"
    location = client.get_model_version_download_uri(name, version)
    check_version(client, name, version)  # KServe's server loads these files: no code in them
    return Served(
        name=name,
        version=version,
        alias=alias,
        artifact_location=location,
        storage_uri=storage_uri(cfg, location, what),
        task=_task(client, location, what),
        tags=version_lineage(client, found),  # MLflow's fields; old versions: their tags
    )


def annotations(served: Served) -> dict[str, str]:
    out = {
        ANNOTATION + "model-name": served.name,
        ANNOTATION + "model-version": served.version,
        ANNOTATION + "model-alias": served.alias,
        ANNOTATION + "model-uri": f"models:/{served.name}/{served.version}",
        ANNOTATION + "artifact-location": served.artifact_location,
    }
    for tag in LINEAGE_TAGS:
        if served.tags.get(tag):
            out[ANNOTATION + tag.removeprefix("lmforge.")] = served.tags[tag]
    for tag, value in served.tags.items():
        if tag.startswith(METRIC_PREFIX):
            out[ANNOTATION + tag.removeprefix("lmforge.")] = value
    return out


def inference_service(cfg: Config, served: Served) -> dict[str, Any]:
    """The ``InferenceService`` manifest of ``served`` with the ``serve`` section's resources."""
    scfg = cfg.serve
    resources = {"cpu": scfg.cpu, "memory": scfg.memory}
    if scfg.gpus:
        resources["nvidia.com/gpu"] = str(scfg.gpus)
    model: dict[str, Any] = {
        "modelFormat": {"name": "huggingface"},
        "storageUri": served.storage_uri,
        "args": [
            f"--model_name={served.service_name}",
            f"--task={HF_TASKS[served.task]}",
            f"--backend={scfg.hf_backend}",
        ],
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        # Pod Security "restricted" (the lmforge namespace enforces it): without these the
        # predictor's pods are refused and the InferenceService never becomes Ready.
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
        },
    }
    if scfg.runtime:
        model["runtime"] = scfg.runtime
    predictor: dict[str, Any] = {
        "minReplicas": scfg.min_replicas,
        "maxReplicas": scfg.max_replicas,
        "scaleMetric": scfg.scale_metric,
        "scaleTarget": scfg.scale_target,
        "model": model,
        # Pod-wide, so KServe's storage-initializer init container is covered as well.
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if served.storage_uri.startswith(STORAGE_CONTAINER_SCHEMES):  # pvc:// mounts, no download
        predictor["storageContainerName"] = STORAGE_CONTAINER
    if scfg.service_account:
        predictor["serviceAccountName"] = scfg.service_account
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": {
            "name": served.service_name,
            "namespace": scfg.namespace,
            "labels": {
                "app.kubernetes.io/name": served.service_name,
                "app.kubernetes.io/part-of": "lmforge",
                "app.kubernetes.io/version": served.version,
            },
            "annotations": annotations(served),
        },
        "spec": {"predictor": predictor},
    }


def to_yaml(objs: list[dict[str, Any]]) -> str:
    import yaml

    return "---\n".join(yaml.safe_dump(o, sort_keys=True, default_flow_style=False) for o in objs)
