"""Every kustomization under k8s/ renders with the real kubectl and every object validates
offline (core kinds against the API's schemas, custom resources against their CRDs); each
overlay needs only the CRDs of the training API it is for; the template jobs are the launcher's
renderings. What a cluster enforces beyond schemas: test_cluster_policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from k8s_policy.sources import K8S, kustomizations, shipped, storage_containers
from k8s_schema import errors

from lmforge.config import load_config, load_config_text
from lmforge.launch import pytorchjob, trainjob

FOLDERS = kustomizations()
OVERLAYS = [f for f in FOLDERS if f.startswith("overlays/")]
TEMPLATES = [f for f in FOLDERS if f.startswith("templates/")]
CORE = {
    "Namespace",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "Service",
    "NetworkPolicy",
}
# The custom resources an overlay may hold: the Trainer's runtime where launches are TrainJobs.
CUSTOM = {
    "overlays/dev": {"TrainingRuntime"},
    "overlays/gpu": {"TrainingRuntime"},
    "overlays/dev-pytorchjob": set(),
    "overlays/gpu-pytorchjob": set(),
}
BUILTIN_GROUPS = ("v1", "apps/", "rbac.authorization.k8s.io/", "networking.k8s.io/")


def pod_specs(obj: dict) -> list[dict]:
    if obj["kind"] in ("Deployment", "StatefulSet"):
        return [obj["spec"]["template"]["spec"]]
    if obj["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
    if obj["kind"] == "TrainingRuntime":
        jobs = obj["spec"]["template"]["spec"]["replicatedJobs"]
        return [j["template"]["spec"]["template"]["spec"] for j in jobs]
    return []


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_object_validates(folder):
    for obj in shipped(folder):
        assert errors(obj) == [], f"{folder}: {obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] != "Namespace":  # k8s/pipeline's objects live with the KFP runs
            pipeline = obj["metadata"]["name"].startswith("lmforge-pipeline")
            expected = "kubeflow" if pipeline else "lmforge"
            assert obj["metadata"]["namespace"] == expected, obj["metadata"]["name"]


def test_the_kserve_storage_container_validates():
    (storage,) = storage_containers()
    assert errors(storage) == []


def test_the_training_operator_patch_mounts_the_init_template_where_the_operator_reads_it():
    folder = K8S / "training-operator"
    configmap = yaml.safe_load((folder / "pytorch-init-container.yaml").read_text())
    assert errors(configmap) == []
    pod = yaml.safe_load((folder / "deployment-patch.yaml").read_text())["spec"]["template"]["spec"]
    (volume,) = pod["volumes"]
    (container,) = pod["containers"]
    (mount,) = container["volumeMounts"]
    assert container["name"] == "training-operator"  # v1.9 manifests/base/deployment.yaml
    assert volume["configMap"]["name"] == configmap["metadata"]["name"] == "pytorch-init-container"
    # v1.9 pkg/config: PyTorchInitContainerTemplateFileDefault = /etc/config/initContainer.yaml
    assert (mount["name"], mount["mountPath"]) == (volume["name"], "/etc/config")
    assert list(configmap["data"]) == ["initContainer.yaml"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_needs_only_the_crds_of_its_api(overlay):
    kinds = {o["kind"] for o in shipped(overlay)}
    assert kinds >= CORE
    custom = {o["kind"] for o in shipped(overlay) if not o["apiVersion"].startswith(BUILTIN_GROUPS)}
    assert custom == CUSTOM[overlay]


def test_every_overlay_is_known():
    assert set(OVERLAYS) == set(CUSTOM)


def test_validation_rejects_what_a_cluster_would():
    """The checks can fail: an unknown field, a wrong type, in a core kind and in the CRD."""
    job = next(o for o in shipped("templates/cpu-pytorchjob") if o["kind"] == "PyTorchJob")
    bad_job = {**job, "spec": {**job["spec"], "runPolicy": {"backofLimit": 3}}}
    assert any("backofLimit" in e for e in errors(bad_job))
    bad_replicas = {**job, "spec": {**job["spec"], "nprocPerNode": 8}}
    assert errors(bad_replicas)
    deploy = next(o for o in shipped("base") if o["kind"] == "Deployment")
    assert errors({**deploy, "spec": {**deploy["spec"], "replica": 2}})


@pytest.mark.parametrize("folder", OVERLAYS + TEMPLATES)
def test_containers_have_requests_and_limits(folder):
    for obj in shipped(folder):
        for spec in pod_specs(obj):
            for c in spec["containers"]:
                for part in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"][part]), (folder, c["name"])


@pytest.mark.parametrize("folder", OVERLAYS + TEMPLATES)
def test_no_secret_is_inlined(folder):
    objs = shipped(folder)
    assert not [o for o in objs if o["kind"] == "Secret"]
    words = ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY", "BACKEND_STORE_URI")
    for obj in objs:
        for spec in pod_specs(obj):
            for c in spec["containers"]:
                for env in c.get("env", []):
                    if any(w in env["name"] for w in words):
                        assert "valueFrom" in env and "value" not in env, env["name"]


@pytest.mark.parametrize("template", TEMPLATES)
def test_template_job_is_the_launchers_rendering(template):
    """The committed job is what the launcher renders from k8s/params/<env>/params.yaml
    (regenerate with `make k8s-jobs`); its ConfigMap holds that same params.yaml."""
    env, api = template.removeprefix("templates/").split("-")
    cfg = load_config(K8S / "params" / env / "params.yaml", [f"launch.api={api}"])
    backend = trainjob if api == "trainjob" else pytorchjob
    configmap, job = backend.render(
        cfg,
        Path("outputs/tokenized"),
        Path("outputs/pretrain"),
        root=Path.cwd(),
        run_name="template",
    )
    objs = shipped(template)
    (deployed,) = [o for o in objs if o["kind"] == job["kind"]]
    assert deployed["spec"] == job["spec"], f"stale k8s/{template}: run make k8s-jobs"
    (params,) = [o for o in objs if o["kind"] == "ConfigMap"]
    assert params["metadata"]["name"] == configmap["metadata"]["name"]
    assert load_config_text(params["data"]["params.yaml"], [f"launch.api={api}"]) == cfg


def test_gpu_templates_schedule_on_gpus():
    job = next(o for o in shipped("templates/gpu-pytorchjob") if o["kind"] == "PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] + replicas["Worker"]["replicas"] == 4
    assert job["spec"]["nprocPerNode"] == "8"
    pod = replicas["Worker"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    train = next(o for o in shipped("templates/gpu-trainjob") if o["kind"] == "TrainJob")
    assert train["spec"]["trainer"]["numNodes"] == 4
    for overlay in ("overlays/gpu", "overlays/gpu-pytorchjob"):
        pvc = next(o for o in shipped(overlay) if o["kind"] == "PersistentVolumeClaim")
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and pvc["spec"]["storageClassName"]


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/dev-pytorchjob"])
def test_dev_overlays_use_the_local_image_everywhere(overlay):
    images = {
        c["image"]
        for o in shipped(overlay)
        for spec in pod_specs(o)
        for c in spec["containers"]
        if "postgres" not in c["image"]
    }
    assert images == {"lmforge:dev"}
