"""The Trainer v2 side of k8s/: lmforge's TrainingRuntime in the TrainJob overlays (dev, gpu),
the GPU template TrainJob (templates/gpu-trainjob), rendered with the real kubectl kustomize and
validated."""

from __future__ import annotations

import functools

import pytest
import yaml
from k8s_schema import REPO, errors, kustomize

from lmforge.config import load_config
from lmforge.launch import trainjob

K8S = REPO / "k8s"
OVERLAYS = ["overlays/dev", "overlays/gpu"]  # the *-pytorchjob ones have no runtime


@functools.cache
def rendered(overlay: str) -> tuple[dict, ...]:
    return tuple(kustomize(K8S / overlay))


def runtime_of(overlay: str) -> dict:
    (runtime,) = [o for o in rendered(overlay) if o["kind"] == "TrainingRuntime"]
    return runtime


def node_pod(runtime: dict) -> dict:
    (node,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"
    return node["template"]["spec"]["template"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_has_a_valid_runtime(overlay):
    for obj in rendered(overlay):
        if obj["kind"] in ("TrainingRuntime", "TrainJob"):
            assert errors(obj) == [], f"{overlay}: {obj['kind']}/{obj['metadata']['name']}"
    runtime = runtime_of(overlay)
    assert runtime["metadata"]["name"] == "lmforge-torch"
    assert runtime["metadata"]["namespace"] == "lmforge"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_runtime_pods_are_restricted_with_the_volume_and_shm(overlay):
    runtime = runtime_of(overlay)
    pod = node_pod(runtime)["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "node"  # where the Trainer injects PET_*
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["work"]["persistentVolumeClaim"]["claimName"] == "lmforge-work"
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"work": "/mnt/lmforge", "dshm": "/dev/shm"}
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][part])
    # a failed node fails its Job; the JobSet restarts all nodes together, a bounded number of times
    assert pod["restartPolicy"] == "Never"
    (node,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert node["template"]["spec"]["backoffLimit"] == 0
    assert runtime["spec"]["template"]["spec"]["failurePolicy"]["maxRestarts"] >= 1


@pytest.mark.parametrize(
    ("folder", "env"), [("components/trainer", "cpu"), ("overlays/gpu", "gpu")]
)
def test_committed_runtime_is_the_launchers_rendering(folder, env):
    cfg = load_config(K8S / "params" / env / "params.yaml", ["launch.api=trainjob"])
    expected = trainjob.render_runtime(cfg)
    committed = yaml.safe_load((K8S / folder / "trainingruntime.yaml").read_text())
    assert committed == expected, f"stale k8s/{folder}: run make k8s-jobs"
    if folder == "overlays/gpu":  # the overlay's patch replaces the component's lists
        assert runtime_of(folder)["spec"] == expected["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_runtime_pods_carry_the_labels_the_network_policies_select(overlay):
    """The Trainer copies no TrainJob or runtime label to pods: the pod template's must say
    what the pretrain-peers and mlflow-ingress policies select."""
    labels = node_pod(runtime_of(overlay))["metadata"]["labels"]
    assert labels == {
        "app.kubernetes.io/name": "lmforge",
        "app.kubernetes.io/component": "pretrain",
    }


def test_gpu_template_trainjob_runs_on_the_gpu_runtime():
    objs = rendered("templates/gpu-trainjob")
    (deployed,) = [o for o in objs if o["kind"] == "TrainJob"]
    assert deployed["spec"]["runtimeRef"]["name"] == runtime_of("overlays/gpu")["metadata"]["name"]
    assert deployed["spec"]["trainer"]["numNodes"] == 4
    assert deployed["spec"]["trainer"]["numProcPerNode"] == 8
    limits = deployed["spec"]["trainer"]["resourcesPerNode"]["limits"]
    assert limits["nvidia.com/gpu"] == "8"
    # the ConfigMap it mounts is the template's generated one
    patch = deployed["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    pod = patch["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    cm_name = pod["volumes"][0]["configMap"]["name"]
    assert [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == cm_name]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    gpu = node_pod(runtime_of("overlays/gpu"))["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "8"


def test_dev_overlay_runtime_uses_the_local_image():
    assert node_pod(runtime_of("overlays/dev"))["spec"]["containers"][0]["image"] == "lmforge:dev"


def test_validation_rejects_a_broken_runtime():
    runtime = runtime_of("overlays/dev")
    spec = runtime["spec"]["template"]["spec"]
    bad = {**runtime, "spec": {**runtime["spec"], "template": {"spec": {**spec, "maxRestart": 1}}}}
    assert any("maxRestart" in e for e in errors(bad))
    wrong_type = {**spec, "failurePolicy": {"maxRestarts": "3"}}
    assert errors({**runtime, "spec": {**runtime["spec"], "template": {"spec": wrong_type}}})
