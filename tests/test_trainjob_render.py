"""The rendered TrainJob (Kubeflow Trainer v2): valid against the v2.3.0 CRD, unchanged through
the ``kubeflow-trainer-api`` models, and torchrun as the entry point reading only PET_*."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from k8s_schema import errors
from kubeflow_trainer_api import models
from test_launch_render import LMFORGE, REPO

from lmforge.config import load_config, load_config_text
from lmforge.errors import ConfigError, LaunchError
from lmforge.launch import trainjob

SHAPES = {
    "cpu-default": [],
    "1x1-gpu": ["launch.nnodes=1", "launch.gpus_per_node=1"],
    "4x8-gpu": [
        "launch.nnodes=4",
        "launch.nproc_per_node=8",
        "launch.gpus_per_node=8",
        "launch.node_selector={nvidia.com/gpu.present: 'true'}",
        "launch.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]",
    ],
    "cluster-runtime": [
        "launch.runtime=torch-distributed",
        "launch.runtime_kind=ClusterTrainingRuntime",
        "launch.env={HF_HUB_OFFLINE: '1'}",
    ],
}


def rendered(overrides, run_name="t"):
    cfg = load_config(None, ["launch.api=trainjob", *overrides])
    objs = trainjob.render(
        cfg, Path("outputs/tokenized"), Path("outputs/pretrain"), root=Path.cwd(), run_name=run_name
    )
    return cfg, objs


@pytest.mark.parametrize("shape", SHAPES)
def test_rendered_trainjob_validates_and_round_trips(shape):
    cfg, (configmap, job) = rendered(SHAPES[shape])
    for obj in (configmap, job, trainjob.render_runtime(cfg)):
        assert errors(obj) == [], f"{shape}: {obj['kind']}"
    assert models.TrainerV1alpha1TrainJob.from_dict(job).to_dict() == job
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == cfg.launch.nnodes
    assert trainer["numProcPerNode"] == cfg.launch.nproc_per_node
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": cfg.launch.runtime_kind,
        "name": cfg.launch.runtime,
    }


def test_entry_point_is_torchrun_and_no_pet_variable_is_set():
    cfg, (configmap, job) = rendered([])
    trainer = job["spec"]["trainer"]
    assert [*trainer["command"], *trainer["args"][:4]] == [
        "torchrun",
        "--no-python",
        "lmforge",
        "pretrain",
        "--backend",
    ]
    assert trainer["args"][-2:] == ["--params", "/etc/lmforge/params.yaml"]
    assert "--data" in trainer["args"] and "/mnt/lmforge/outputs/tokenized" in trainer["args"]
    names = {e["name"] for e in trainer["env"]}
    assert not {n for n in names if n.startswith("PET_") or n in ("RANK", "WORLD_SIZE")}
    assert "elasticPolicy" not in str(job)
    # The run's ConfigMap reaches the node container through the runtime patch.
    (patch,) = job["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    assert node["name"] == "node" and pod["containers"][0]["name"] == "node"
    assert pod["volumes"][0]["configMap"]["name"] == configmap["metadata"]["name"]
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == "/etc/lmforge"
    assert load_config_text(configmap["data"]["params.yaml"]) == cfg


def test_gpu_resources_and_scheduling_per_node():
    _, (_, job) = rendered(SHAPES["4x8-gpu"])
    resources = job["spec"]["trainer"]["resourcesPerNode"]
    assert resources["limits"]["nvidia.com/gpu"] == "8"
    pod = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    pod = pod["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


PARAMS = str(REPO / "params.yaml")


def test_cli_render_prints_the_configmap_and_the_trainjob(tmp_path):
    out = subprocess.run(
        [LMFORGE, "pretrain", "--render", "--set", "launch.api=trainjob", "--params", PARAMS],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": str(Path(LMFORGE).parent), "LMFORGE_PIPELINE_RUN_ID": "cli"},
        check=True,
    ).stdout
    docs = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in docs] == ["ConfigMap", "TrainJob"]
    assert docs[1]["metadata"]["name"] == "lmforge-pretrain-cli"
    assert all(errors(d) == [] for d in docs)


def test_long_or_odd_run_names_give_rfc1035_names():
    for run in ("A" * 80, "Run_2026-12-02T00:00:00Z", "9-starts-with-a-digit"):
        _, (_, job) = rendered([], run_name=run)
        assert errors(job) == [] and len(job["metadata"]["name"]) <= 63


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("launch.env={PET_NNODES: '4'}", "launch.env: PET_NNODES"),
        ("launch.elastic_min_nodes=1", "launch.elastic_min_nodes: Kubeflow Trainer v2 has no"),
        ("launch.restart_policy=ExitCode", "launch.restart_policy: 'ExitCode'"),
        ("launch.runtime=Lmforge_Torch", "launch.runtime: 'Lmforge_Torch' is not an RFC 1035"),
        (f"launch.runtime=r{'x' * 63}", "launch.runtime:"),
        ("launch.namespace=-bad", "launch.namespace:"),
    ],
)
def test_config_errors_name_the_key(override, key):
    extra = ["launch.elastic_max_nodes=2"] if "elastic" in override else []
    with pytest.raises(ConfigError) as err:
        load_config(None, ["launch.api=trainjob", override, *extra])
    assert key in str(err.value)


def test_trainjob_is_the_default_and_a_pytorchjob_ignores_trainjob_keys():
    assert load_config(None).launch.api == "trainjob"
    cfg = load_config(None, ["launch.api=pytorchjob", "launch.runtime=Not_Checked_Here"])
    assert cfg.launch.api == "pytorchjob"


def test_a_misspelt_field_is_caught_by_the_models_and_the_schema():
    _, (_, job) = rendered([])
    job["spec"]["trainer"]["numProcsPerNode"] = 2
    assert any("numProcsPerNode" in e for e in errors(job))
    with pytest.raises(LaunchError, match="unknown to the kubeflow-trainer-api models"):
        trainjob.check(job)
    del job["spec"]["trainer"]["numProcsPerNode"]
    job["spec"]["trainer"]["env"].append({"name": "PET_NODE_RANK", "value": "0"})
    with pytest.raises(LaunchError, match=r"trainer\.env sets PET_NODE_RANK"):
        trainjob.check(job)
