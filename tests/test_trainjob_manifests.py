"""The Trainer v2 side of k8s/: lmforge's TrainingRuntime in every overlay, the gpu deployment's
TrainJob (overlays/gpu-trainjob), rendered with the real kubectl kustomize and validated."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from k8s_schema import REPO, errors, kustomize

from lmforge.config import load_config
from lmforge.launch import trainjob

K8S = REPO / "k8s"
OVERLAYS = ["base", "overlays/dev", "overlays/gpu", "overlays/gpu-trainjob"]


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
    ("overlay", "params", "kustomized"),
    [
        ("base", "base", "base"),
        ("overlays/gpu", "overlays/gpu", "overlays/gpu"),
        ("overlays/gpu-trainjob", "overlays/gpu", "overlays/gpu-trainjob"),
    ],
)
def test_committed_runtime_is_the_launchers_rendering(overlay, params, kustomized):
    cfg = load_config(K8S / params / "params.yaml", ["launch.api=trainjob"])
    expected = trainjob.render_runtime(cfg)
    deployed = runtime_of(kustomized)
    assert deployed["spec"] == expected["spec"], f"stale {overlay}: run make k8s-jobs"


def test_gpu_trainjob_is_the_launchers_rendering_and_replaces_the_pytorchjob():
    cfg = load_config(K8S / "overlays/gpu/params.yaml", ["launch.api=trainjob"])
    _, job = trainjob.render(
        cfg,
        Path("outputs/tokenized"),
        Path("outputs/pretrain"),
        root=Path.cwd(),
        run_name="template",
    )
    objs = rendered("overlays/gpu-trainjob")
    assert not [o for o in objs if o["kind"] == "PyTorchJob"]  # one training, not two
    (deployed,) = [o for o in objs if o["kind"] == "TrainJob"]
    assert deployed["spec"] == job["spec"], "stale gpu-trainjob/trainjob.yaml: run make k8s-jobs"
    assert deployed["spec"]["trainer"]["numNodes"] == 4
    assert deployed["spec"]["trainer"]["numProcPerNode"] == 8
    limits = deployed["spec"]["trainer"]["resourcesPerNode"]["limits"]
    assert limits["nvidia.com/gpu"] == "8"
    # the ConfigMap it mounts is the overlay's generated one
    patch = deployed["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    pod = patch["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    cm_name = pod["volumes"][0]["configMap"]["name"]
    assert [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == cm_name]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    gpu = node_pod(runtime_of("overlays/gpu-trainjob"))["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "8"


def test_dev_overlay_runtime_uses_the_local_image():
    assert node_pod(runtime_of("overlays/dev"))["spec"]["containers"][0]["image"] == "lmforge:dev"


def test_validation_rejects_a_broken_runtime():
    runtime = runtime_of("base")
    spec = runtime["spec"]["template"]["spec"]
    bad = {**runtime, "spec": {**runtime["spec"], "template": {"spec": {**spec, "maxRestart": 1}}}}
    assert any("maxRestart" in e for e in errors(bad))
    wrong_type = {**spec, "failurePolicy": {"maxRestarts": "3"}}
    assert errors({**runtime, "spec": {**runtime["spec"], "template": {"spec": wrong_type}}})
