"""The compiled pipelines: fresh, parseable into KFP's protos, scheduled as params.yaml says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from lmforge.config import load_config, load_config_text
from lmforge_pipelines.compile import PIPELINES, compile_all

REPO = Path(__file__).resolve().parents[1]
STEP_TASKS = {
    "pretrain": {"settings", "validate", "augment", "tokenize", "pretrain"},
    "finetune": {"settings", "validate", "augment", "finetune", "evaluate"},
    "full": {"settings", "validate", "augment", "tokenize", "pretrain", "finetune", "evaluate"},
    "sweep": {"sweep-plan", "for-loop-1", "sweep-best"},
    "sft": {"settings", "validate", "augment", "finetune", "evaluate"},
    "multimodal": {"multimodal-align", "multimodal-instruct", "multimodal-evaluate"},
}


def repo_config(*overrides: str):
    return load_config(REPO / "params.yaml", list(overrides))


def baked_params(spec: pipeline_spec_pb2.PipelineSpec) -> str:
    """The config a pipeline was compiled with: the ``params`` its settings task gets."""
    settings = spec.root.dag.tasks["settings"].inputs.parameters["params"]
    return settings.runtime_value.constant.string_value


def parse(path: Path) -> tuple[pipeline_spec_pb2.PipelineSpec, pipeline_spec_pb2.PlatformSpec]:
    """A compiled file as KFP's protos; unknown fields are errors, not ignored."""
    docs = list(yaml.safe_load_all(path.read_text()))
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    platform = pipeline_spec_pb2.PlatformSpec()
    if len(docs) > 1:
        json_format.ParseDict(docs[1], platform)
    return spec, platform


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compiled")
    compile_all(repo_config(), out)
    return out


@pytest.mark.parametrize("name", PIPELINES)
def test_committed_yaml_is_fresh(fresh, name):
    committed = REPO / "pipelines" / name / "pipeline.yaml"
    assert committed.exists(), f"{committed} missing: run `lmforge pipeline compile`"
    assert committed.read_text() == (fresh / name / "pipeline.yaml").read_text(), (
        f"{committed.relative_to(REPO)} is stale: run `lmforge pipeline compile` and commit it"
    )


@pytest.mark.parametrize("name", PIPELINES)
def test_committed_yaml_parses_into_pipeline_spec(name):
    spec, platform = parse(REPO / "pipelines" / name / "pipeline.yaml")
    assert spec.pipeline_info.name == f"lmforge-{name}"
    tasks = set(spec.root.dag.tasks)
    assert STEP_TASKS[name] <= tasks
    executors = spec.deployment_spec.fields["executors"].struct_value.fields
    for executor in executors.values():
        container = executor.struct_value.fields.get("container")
        if container is None:  # importers
            continue
        fields = container.struct_value.fields
        assert fields["image"].string_value == repo_config().kubeflow.image
        command = " ".join(v.string_value for v in fields["command"].list_value.values)
        assert "pip install" not in command  # the image has lmforge installed
    assert "kubernetes" in platform.platforms


@pytest.mark.parametrize("name", ["finetune", "full", "sft"])
def test_register_runs_only_when_the_gate_passes(name):
    spec, _ = parse(REPO / "pipelines" / name / "pipeline.yaml")
    conditions = [t for t in spec.root.dag.tasks.values() if t.trigger_policy.condition]
    assert len(conditions) == 1
    assert "evaluate-Output" in conditions[0].trigger_policy.condition
    branch = spec.components[conditions[0].component_ref.name]
    assert set(branch.dag.tasks) == {"register"}
    assert "register" not in spec.root.dag.tasks


def test_the_sft_pipeline_is_the_finetune_pipeline_with_task_sft():
    spec, _ = parse(REPO / "pipelines" / "sft" / "pipeline.yaml")
    assert load_config_text(baked_params(spec)) == repo_config("finetune.task=sft")
    form = spec.root.input_definitions.parameters
    assert form["finetune_task"].default_value.string_value == "sft"
    assert "sft_min_primary" in form and "min_primary" not in form


def test_baked_params_are_params_yaml_and_heavy_steps_are_not_cached():
    spec, _ = parse(REPO / "pipelines" / "full" / "pipeline.yaml")
    params = spec.root.input_definitions.parameters
    assert "params" not in params  # baked in, not a JSON field of the run form
    assert load_config_text(baked_params(spec)) == repo_config()
    assert params["backend"].default_value.string_value == "kubernetes"
    tasks = spec.root.dag.tasks
    assert tasks["validate"].caching_options.enable_cache
    for heavy in ("pretrain", "finetune", "evaluate"):
        assert not tasks[heavy].caching_options.enable_cache, heavy
    # The register task sits in the condition's sub-DAG.
    branch = next(c for n, c in spec.components.items() if n.startswith("comp-condition"))
    assert not branch.dag.tasks["register"].caching_options.enable_cache


def test_gpu_scheduling_volume_and_mlflow_secret_follow_the_config():
    spec, platform = parse(REPO / "pipelines" / "full" / "pipeline.yaml")
    kf = repo_config().kubeflow
    executors = json_format.MessageToDict(platform.platforms["kubernetes"])["deploymentSpec"][
        "executors"
    ]
    finetune = executors["exec-finetune"]
    assert finetune["nodeSelector"]["labels"] == kf.gpu_node_selector
    assert finetune["tolerations"][0]["key"] == kf.gpu_toleration_key
    assert "nodeSelector" not in executors["exec-validate"]
    (mount,) = executors["exec-pretrain"]["pvcMount"]
    launch = repo_config().launch
    assert (mount["constant"], mount["mountPath"]) == (launch.pvc_name, launch.mount_path)
    for name, executor in executors.items():
        (secret,) = executor["secretAsEnv"]
        assert secret["secretName"] == kf.mlflow_secret, name
        assert {e["envVar"] for e in secret["keyToEnv"]} == set(kf.mlflow_secret_keys)
    resources = spec.deployment_spec.fields["executors"].struct_value.fields
    gpu = resources["exec-finetune"].struct_value.fields["container"].struct_value.fields
    accelerator = gpu["resources"].struct_value.fields["accelerator"].struct_value.fields
    assert accelerator["resourceType"].string_value == "nvidia.com/gpu"


def test_image_caching_and_gpu_settings_are_configurable(tmp_path):
    cfg = repo_config(
        "kubeflow.image=registry.local/lmforge:test",
        "kubeflow.cache_heavy_steps=true",
        "kubeflow.gpu_steps=[]",
    )
    compile_all(cfg, tmp_path)
    spec, platform = parse(tmp_path / "full" / "pipeline.yaml")
    assert "image: registry.local/lmforge:test" in (tmp_path / "full" / "pipeline.yaml").read_text()
    assert "ghcr.io/lmforge" not in (tmp_path / "full" / "pipeline.yaml").read_text()
    assert spec.root.dag.tasks["pretrain"].caching_options.enable_cache
    executors = json_format.MessageToDict(platform.platforms["kubernetes"])["deploymentSpec"][
        "executors"
    ]
    assert "nodeSelector" not in executors["exec-finetune"]
    assert load_config_text(baked_params(spec)).kubeflow.image == "registry.local/lmforge:test"


def test_cli_compile_writes_into_the_given_folder(tmp_path):
    lmforge = Path(sys.executable).parent / "lmforge"
    proc = subprocess.run(
        [str(lmforge), "pipeline", "compile", "--out-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for name in PIPELINES:
        parse(tmp_path / name / "pipeline.yaml")
    assert not list(tmp_path.rglob(".pipeline-*"))  # no temp files left behind


def test_components_and_pipelines_import_without_torch_or_mlflow():
    code = (
        "import sys; from lmforge.config import load_config; "
        "from lmforge_pipelines.compile import build_pipeline; "
        "[build_pipeline(load_config(None), n) "
        "for n in ('pretrain', 'finetune', 'full', 'sweep')]; "
        "print([m for m in ('torch', 'mlflow', 'transformers', 'great_expectations') "
        "if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_pipelines_build_from_the_installed_packages_without_sys_path_edits(tmp_path):
    """Compiling imports lmforge_pipelines/lmforge_components by name, from any directory."""
    code = (
        "import sys; before = list(sys.path); from lmforge.config import load_config; "
        "from lmforge_pipelines.compile import build_pipeline; "
        "[build_pipeline(load_config(None), n) "
        "for n in ('pretrain', 'finetune', 'full', 'sweep')]; "
        "assert sys.path == before, set(sys.path) ^ set(before); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'components', 'pipelines', 'lmforge_components', 'lmforge_pipelines'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "['lmforge_components', 'lmforge_pipelines']"
