"""Everything lmforge ships or renders for a cluster, as objects: every kustomization under k8s/
(overlays, base, the pipeline account, the template jobs), the KServe storage container,
``pretrain --render`` for both APIs, ``sweep --render``'s trial jobs with trial values
substituted, and ``deploy --render``'s InferenceService."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import yaml
from k8s_schema import REPO, kustomize

from k8s_policy.workloads import Installed
from lmforge.config import load_config
from lmforge.launch import pytorchjob, trainjob
from lmforge.serve.kserve import Served, inference_service
from lmforge.sweep import katib

K8S = REPO / "k8s"
APIS = ("pytorchjob", "trainjob")
ENVS = ("cpu", "gpu")
RUNTIME_OVERLAY = {"cpu": "overlays/dev", "gpu": "overlays/gpu"}  # where each env's runtime is
SPACE = {
    "pretrain.lr": {"type": "loguniform", "low": 5e-4, "high": 8e-3},
    "pretrain.precision": {"type": "choice", "values": ["fp32", "bf16"]},
}
TRIAL_VALUES = {"pretrain.lr": "0.0012", "pretrain.precision": "bf16"}


def kustomizations(kind: str = "Kustomization") -> list[str]:
    """Every folder under k8s/ with a kustomization of ``kind`` (Component: not appliable)."""
    found = []
    for path in sorted(K8S.rglob("kustomization.yaml")):
        if yaml.safe_load(path.read_text()).get("kind", "Kustomization") == kind:
            found.append(path.parent.relative_to(K8S).as_posix())
    return found


def applied_sets() -> list[str]:
    """What a user applies to set a cluster up: every kustomization but the template jobs."""
    return [k for k in kustomizations() if not k.startswith("templates/")]


@functools.cache
def shipped(folder: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(K8S / folder))


def storage_containers() -> list[dict[str, Any]]:
    """k8s/kserve: cluster-scoped objects a cluster admin applies beside KServe."""
    paths = sorted((K8S / "kserve").glob("*.yaml"))
    return [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc]


def pytorch_init_template() -> str:
    """k8s/training-operator: the init container template the Training Operator is given."""
    path = K8S / "training-operator" / "pytorch-init-container.yaml"
    return yaml.safe_load(path.read_text())["data"]["initContainer.yaml"]


def installed(env: str) -> Installed:
    """The operators as k8s/ sets them up, with the runtime of ``env``'s overlay."""
    return Installed(runtimes(env), storage_containers(), pytorch_init_template())


@functools.cache
def runtimes(env: str) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o
        for o in shipped(RUNTIME_OVERLAY[env])
        if o["kind"] == "TrainingRuntime"
    }


def _cfg(env: str, api: str, *extra: str):
    return load_config(K8S / "params" / env / "params.yaml", [f"launch.api={api}", *extra])


@functools.cache
def rendered(env: str, api: str) -> tuple[dict[str, Any], ...]:
    """``lmforge pretrain --render`` with ``k8s/params/<env>`` and ``launch.api=<api>``."""
    backend = trainjob if api == "trainjob" else pytorchjob
    out = Path("outputs/pretrain")
    return tuple(backend.render(_cfg(env, api), Path("outputs/tokenized"), out, root=Path.cwd()))


@functools.cache
def trial(env: str, api: str) -> tuple[dict[str, Any], ...]:
    """``lmforge sweep --render``'s ConfigMap, and the job of one trial as Katib makes it."""
    cfg = _cfg(env, api, f"sweep.space={json.dumps(SPACE)}")
    configmap, experiment = katib.render(
        cfg, Path("outputs/tokenized"), Path("outputs/sweep"), root=Path.cwd()
    )
    return configmap, katib.trial_job(experiment, TRIAL_VALUES)


@functools.cache
def predictor() -> dict[str, Any]:
    """``lmforge deploy --render``'s InferenceService of a registered version."""
    served = Served(
        name="lmforge-lm",
        version="3",
        alias="champion",
        artifact_location="mlflow-artifacts:/1/models/m-1/artifacts",
        storage_uri="s3://mlflow/artifacts/1/models/m-1/artifacts/model",
        task="text-generation",
    )
    return inference_service(load_config(None), served)


def everything() -> dict[str, list[dict[str, Any]]]:
    """Source name -> its objects."""
    out = {f"k8s/{k}": list(shipped(k)) for k in kustomizations()}
    out["k8s/kserve"] = storage_containers()
    out["k8s/training-operator"] = [
        yaml.safe_load((K8S / "training-operator" / "pytorch-init-container.yaml").read_text())
    ]
    for env in ENVS:
        for api in APIS:
            out[f"pretrain --render ({env}, {api})"] = list(rendered(env, api))
            out[f"sweep --render trial ({env}, {api})"] = list(trial(env, api))
    out["deploy --render"] = [predictor()]
    return out
