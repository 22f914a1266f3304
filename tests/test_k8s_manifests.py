"""Every kustomize overlay renders with the real kubectl and every object validates offline."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from k8s_schema import REPO, errors, kustomize

from lmforge.config import load_config, load_config_text
from lmforge.launch.pytorchjob import render

K8S = REPO / "k8s"
OVERLAYS = ["base", "overlays/dev", "overlays/gpu"]


@functools.cache
def rendered(overlay: str) -> tuple[dict, ...]:
    return tuple(kustomize(K8S / overlay))


def pod_specs(obj: dict) -> list[dict]:
    if obj["kind"] in ("Deployment", "StatefulSet"):
        return [obj["spec"]["template"]["spec"]]
    if obj["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
    return []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates(overlay):
    objs = rendered(overlay)
    kinds = {o["kind"] for o in objs}
    assert kinds >= {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "PersistentVolumeClaim",
        "Deployment",
        "StatefulSet",
        "Service",
        "NetworkPolicy",
        "ConfigMap",
        "PyTorchJob",
    }
    for obj in objs:
        assert errors(obj) == [], f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "lmforge"


def test_validation_rejects_what_a_cluster_would():
    """The checks can fail: an unknown field, a wrong type, in a core kind and in the CRD."""
    job = next(o for o in rendered("base") if o["kind"] == "PyTorchJob")
    bad_job = {**job, "spec": {**job["spec"], "runPolicy": {"backofLimit": 3}}}
    assert any("backofLimit" in e for e in errors(bad_job))
    bad_replicas = {**job, "spec": {**job["spec"], "nprocPerNode": 8}}
    assert errors(bad_replicas)
    deploy = next(o for o in rendered("base") if o["kind"] == "Deployment")
    assert errors({**deploy, "spec": {**deploy["spec"], "replica": 2}})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_run_non_root_with_requests_and_limits(overlay):
    for obj in rendered(overlay):
        for spec in pod_specs(obj):
            for c in spec["containers"]:
                where = f"{overlay}: {obj['kind']}/{obj['metadata']['name']}/{c['name']}"
                non_root = c.get("securityContext", {}).get(
                    "runAsNonRoot", spec.get("securityContext", {}).get("runAsNonRoot")
                )
                assert non_root is True, where
                assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
                for part in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"][part]), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_inlined(overlay):
    objs = rendered(overlay)
    assert not [o for o in objs if o["kind"] == "Secret"]
    words = ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY", "BACKEND_STORE_URI")
    for obj in objs:
        for spec in pod_specs(obj):
            for c in spec["containers"]:
                for env in c.get("env", []):
                    if any(w in env["name"] for w in words):
                        assert "valueFrom" in env and "value" not in env, env["name"]


def test_launcher_role_allows_exactly_what_it_calls():
    role = next(
        o
        for o in rendered("base")
        if o["kind"] == "Role" and o["metadata"]["name"] == "lmforge-launcher"
    )
    granted = {
        (group, res, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for res in rule["resources"]
        for verb in rule["verbs"]
    }
    job_verbs = {"create", "get", "list", "watch", "delete"}
    assert granted == (
        {("kubeflow.org", "pytorchjobs", v) for v in job_verbs}
        | {("", "configmaps", v) for v in ("create", "get", "delete")}
        | {("", "pods", v) for v in ("get", "list")}
        | {("", "pods/log", "get")}
        # the TrainJob client (lmforge.launch.kube_trainjob)
        | {("trainer.kubeflow.org", "trainjobs", v) for v in ("create", "get", "delete")}
        | {("", "events", "list")}
    )


@pytest.mark.parametrize("overlay", ["base", "overlays/gpu"])
def test_overlay_job_is_the_launchers_rendering(overlay):
    """The committed PyTorchJob is what the launcher renders from the overlay's params.yaml
    (regenerate with `make k8s-jobs`); its ConfigMap holds that same params.yaml."""
    params = K8S / overlay / "params.yaml"
    cfg = load_config(params)
    _, job = render(
        cfg,
        Path("outputs/tokenized"),
        Path("outputs/pretrain"),
        root=Path.cwd(),
        run_name="template",
    )
    objs = rendered(overlay)
    deployed = next(o for o in objs if o["kind"] == "PyTorchJob")
    assert deployed["spec"] == job["spec"], f"stale {overlay}/pytorchjob.yaml: run make k8s-jobs"
    cm_name = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["volumes"][1]
    configmap = next(
        o
        for o in objs
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == cm_name["configMap"]["name"]
    )
    assert load_config_text(configmap["data"]["params.yaml"]) == cfg


def test_gpu_overlay_schedules_on_gpus():
    job = next(o for o in rendered("overlays/gpu") if o["kind"] == "PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] + replicas["Worker"]["replicas"] == 4
    assert job["spec"]["nprocPerNode"] == "8"
    pod = replicas["Worker"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    pvc = next(o for o in rendered("overlays/gpu") if o["kind"] == "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and pvc["spec"]["storageClassName"]


def test_dev_overlay_uses_the_local_image_everywhere():
    images = {
        c["image"]
        for o in rendered("overlays/dev")
        for spec in pod_specs(o)
        for c in spec["containers"]
        if "postgres" not in c["image"]
    }
    assert images == {"lmforge:dev"}
