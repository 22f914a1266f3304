"""The rendered PyTorchJob: valid against the Training Operator's CRD for every shape we run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from k8s_schema import errors

from lmforge.config import load_config, load_config_text
from lmforge.errors import ConfigError, LaunchError
from lmforge.launch.pytorchjob import is_valid_job_name, job_name, render, volume_path

REPO = Path(__file__).resolve().parents[1]
LMFORGE = shutil.which("lmforge") or str(Path(sys.executable).parent / "lmforge")

SHAPES = {
    "1x1-gpu": ["launch.nnodes=1", "launch.nproc_per_node=1", "launch.gpus_per_node=1"],
    "4x8-gpu": [
        "launch.nnodes=4",
        "launch.nproc_per_node=8",
        "launch.gpus_per_node=8",
        "launch.node_selector={nvidia.com/gpu.present: 'true'}",
        "launch.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]",
    ],
    "elastic": [
        "launch.nnodes=3",
        "launch.elastic_min_nodes=2",
        "launch.elastic_max_nodes=4",
        "launch.nproc_per_node=2",
    ],
    "cpu-default": [],
}


def rendered(overrides, **kwargs):
    cfg = load_config(None, ["launch.api=pytorchjob", *overrides])  # not the default any more
    return cfg, render(
        cfg, Path("outputs/tokenized"), Path("outputs/pretrain"), run_name="t", **kwargs
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_rendered_manifests_validate(shape):
    _, objs = rendered(SHAPES[shape])
    for obj in objs:
        assert errors(obj) == [], f"{shape}: {obj['kind']}"


def _container(job, rtype):
    return job["spec"]["pytorchReplicaSpecs"][rtype]["template"]["spec"]["containers"][0]


def test_single_gpu_is_one_master_without_torchrun():
    _, (_, job) = rendered(SHAPES["1x1-gpu"])
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master"} and specs["Master"]["replicas"] == 1
    c = _container(job, "Master")
    assert c["command"] == ["lmforge"] and c["args"][:3] == ["pretrain", "--backend", "inline"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_four_nodes_of_eight_gpus():
    _, (_, job) = rendered(SHAPES["4x8-gpu"])
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert (specs["Master"]["replicas"], specs["Worker"]["replicas"]) == (1, 3)
    assert job["spec"]["nprocPerNode"] == "8"
    for rtype in specs:
        c = _container(job, rtype)
        assert c["command"] == ["torchrun"] and c["args"][:2] == ["--no-python", "lmforge"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
        pod = specs[rtype]["template"]["spec"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert pod["tolerations"][0]["effect"] == "NoSchedule"
        assert specs[rtype]["restartPolicy"] == "OnFailure"
    assert job["spec"]["runPolicy"]["backoffLimit"] == 3


def test_elastic_job_is_workers_with_a_policy():
    _, (_, job) = rendered(SHAPES["elastic"])
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Worker"}
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
    policy = job["spec"]["elasticPolicy"]
    assert (policy["minReplicas"], policy["maxReplicas"], policy["rdzvBackend"]) == (2, 4, "c10d")


def test_replicas_get_the_resolved_config_and_volume_paths():
    cfg, (configmap, job) = rendered(["pretrain.lr=3e-4", "launch.mount_path=/data"])
    assert load_config_text(configmap["data"]["params.yaml"]) == cfg
    c = _container(job, "Master")
    args = c["args"]
    assert args[args.index("--data") + 1] == "/data/outputs/tokenized"
    assert args[args.index("--out") + 1] == "/data/outputs/pretrain"
    params_path = args[args.index("--params") + 1]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts[str(Path(params_path).parent)] == "params"
    volumes = {
        v["name"]: v
        for v in job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["volumes"]
    }
    assert volumes["params"]["configMap"]["name"] == configmap["metadata"]["name"]
    assert volumes["work"]["persistentVolumeClaim"]["claimName"] == cfg.launch.pvc_name
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"


def test_launch_env_reaches_every_replica_as_it_does_a_trainjob():
    """launch.env is the trainer's environment whatever the API (issue 32: PyTorchJobs ignored
    it); a key lmforge sets itself is overridden by the user's, in both."""
    from lmforge.launch import trainjob

    settings = ['launch.env={"HF_HOME": "/mnt/lmforge/hf", "NCCL_DEBUG": "INFO"}']
    _, (_, job) = rendered([*settings, "launch.nnodes=2"])
    for replica in ("Master", "Worker"):
        env = {e["name"]: e["value"] for e in _container(job, replica)["env"]}
        assert env["HF_HOME"] == "/mnt/lmforge/hf" and env["NCCL_DEBUG"] == "INFO"
    tj_cfg = load_config(None, ["launch.api=trainjob", *settings, "launch.nnodes=2"])
    _, tj = trainjob.render(
        tj_cfg, Path("outputs/tokenized"), Path("outputs/pretrain"), run_name="t"
    )
    assert tj["spec"]["trainer"]["env"] == _container(job, "Master")["env"]


def test_folders_outside_the_shared_volume_are_refused(tmp_path):
    assert volume_path(tmp_path / "a" / "b", tmp_path, "/mnt/x") == "/mnt/x/a/b"
    assert volume_path(Path("/mnt/x/run/out"), tmp_path, "/mnt/x") == "/mnt/x/run/out"
    with pytest.raises(LaunchError, match="shared volume"):
        volume_path(Path("/elsewhere/out"), tmp_path, "/mnt/x")


def test_relative_folders_resolve_against_the_working_directory(tmp_path, monkeypatch):
    # dvc.yaml passes relative paths; with an output elsewhere the volume's root moves up.
    (tmp_path / "proj").mkdir()
    monkeypatch.chdir(tmp_path / "proj")
    assert volume_path(Path("outputs/tok"), tmp_path, "/mnt/x") == "/mnt/x/proj/outputs/tok"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["launch.gpus_per_node=8", "launch.nproc_per_node=1"], "launch.nproc_per_node"),
        (["launch.elastic_min_nodes=2"], "launch.elastic_min_nodes"),
        (["launch.elastic_min_nodes=3", "launch.elastic_max_nodes=4", "launch.nnodes=2"], "nnodes"),
        (["launch.nnodes=0"], "launch.nnodes"),
    ],
)
def test_inconsistent_launch_settings_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        rendered(overrides)


RUN_NAMES = [
    "",
    "run",
    "Run_With.Dots_and_CAPS",
    "2026-11-28T10:00:00Z",
    "ünïcödé-rün",
    "--",
    "a" * 300,
    "5f3c2a1e-9b7d-4c1f-8e2a-7d6b5c4a3f21",
    "local-0123456789ab-fedcba9876543210",
    "x/y\\z@#$%",
]


@pytest.mark.parametrize("run", RUN_NAMES)
@pytest.mark.parametrize("base", ["lmforge-pretrain", "LMForge Pretrain!", "9lives"])
def test_job_names_are_dns_labels_whatever_the_run_name(base, run):
    name = job_name(base, run)
    assert is_valid_job_name(name), name
    assert len(f"{name}-worker-127") <= 63  # pod and service names stay DNS-1035 labels


def test_job_names_keep_runs_apart_and_simple_names_readable():
    names = {job_name("lmforge-pretrain", r) for r in RUN_NAMES}
    assert len(names) == len(set(RUN_NAMES))
    assert job_name("lmforge-pretrain", "run-1") == "lmforge-pretrain-run-1"
    assert job_name("lmforge-pretrain", "Run_1") != job_name("lmforge-pretrain", "run-1")


def test_cli_render_prints_valid_manifests(tmp_path):
    proc = subprocess.run(
        [
            LMFORGE,
            "pretrain",
            "--render",
            "--set",
            "launch.nnodes=3",
            "--set",
            "launch.api=pytorchjob",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(Path(sys.executable).parent), "LMFORGE_PIPELINE_RUN_ID": "Render Test"},
    )
    assert proc.returncode == 0, proc.stderr
    objs = list(yaml.safe_load_all(proc.stdout))
    assert [o["kind"] for o in objs] == ["ConfigMap", "PyTorchJob"]
    assert all(errors(o) == [] for o in objs)
    assert objs[1]["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    assert is_valid_job_name(objs[1]["metadata"]["name"])
