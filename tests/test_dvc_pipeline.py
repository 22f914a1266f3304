"""`dvc repro` of the whole chain on a micro config, as a user runs it: the repo's own
`dvc.yaml` and code in a fresh DVC project, pretraining through the local PyTorchJob runner
(2 replicas), registration in the project's embedded MLflow store, then `lmforge promote` and a
prediction from `models:/NAME@champion`. A second `dvc repro` finds nothing to do but the inputs
stage, which runs every time."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmforge import mkl_shim
from lmforge.config import parse_override
from lmforge_components import testing

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = (
    "inputs",
    "validate",
    "augment",
    "tokenize",
    "pretrain",
    "finetune",
    "evaluate",
    "register",
)
TRACKED = STAGES[1:]  # a run in MLflow each; inputs only fingerprints files
RUN_ID = "dvc-micro-run"
READS = "params-read.jsonl"  # LMFORGE_RECORD_PARAMS: the keys each stage's processes read
# Read but not a dependency of any output: where MLflow runs are logged (`tracking`, and the
# secret the rendered PyTorchJob takes the tracking URI from). register's output names registry
# versions in that store, so it declares `tracking`.
NOT_DEPENDENCIES = ("tracking.", "kubeflow.mlflow_secret")

pytestmark = pytest.mark.slow


def micro_params(*extra: str) -> dict:
    """The repo's params.yaml with the micro overrides written in, as a user would edit it."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for item in [*testing.MICRO, *extra]:
        keys, value = parse_override(item)
        node = params
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return params


def run(*cmd: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the repo's store
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", LMFORGE_PIPELINE_RUN_ID=RUN_ID)
    env["LMFORGE_RECORD_PARAMS"] = str(cwd / READS)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("dvc-project")
    shutil.copytree(REPO / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", work / "dvc.yaml")
    params = micro_params(
        "launch.nnodes=2",
        "pretrain.parallel=ddp",  # the default launch: Master + Worker
        "register.min_primary=0.0",
        "register.lm_max_primary=1000000.0",  # a micro model's gate
    )
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    testing.build_micro_data(work / "data")
    run("git", "init", "--quiet", cwd=work)
    run(str(BIN / "dvc"), "init", "--quiet", cwd=work)
    return work


@pytest.fixture(scope="module")
def first_repro(project) -> str:
    return run(str(BIN / "dvc"), "repro", cwd=project)


def test_repro_runs_every_stage_and_registers_both_models(project, first_repro):
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first_repro, stage
    assert set(STAGES[1:]) <= set(yaml.safe_load((project / "dvc.lock").read_text())["stages"])
    meta = json.loads((project / "outputs/tokenized/blocks/meta.json").read_text())
    assert meta["block_size"] == 32 and meta["splits"]["train"]["n_blocks"] > 0  # the micro's
    registered = json.loads((project / "outputs/register/registered.json").read_text())
    assert registered["pipeline_run_id"] == RUN_ID
    pretrain = json.loads((project / "outputs/pretrain/metrics.json").read_text())
    assert pretrain["world_size"] == 2  # through the local runner's two replicas
    # dvc -> lmforge pretrain -> the local runner -> torchrun -> replicas: on an AMD CPU the CLI
    # gave itself MKL's fast kernels and every process under it kept them (lmforge.mkl_shim).
    amd, cc = mkl_shim.cpu_vendor() == "AuthenticAMD", shutil.which(os.environ.get("CC") or "cc")
    assert pretrain["mkl_shim"].startswith("on" if amd and cc else "off"), pretrain["mkl_shim"]
    shown = json.loads(run(str(BIN / "dvc"), "metrics", "show", "--json", cwd=project))
    assert shown  # dvc reads every declared metrics file
    run(str(BIN / "dvc"), "plots", "show", "--json", cwd=project)


def test_one_parent_run_with_a_nested_run_per_stage_and_lineage(project, first_repro):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lmforge")
    runs = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`lmforge.pipeline_run_id` = '{RUN_ID}'"
    )
    parents = [r for r in runs if r.data.tags.get("lmforge.stage") == "pipeline"]
    assert len(parents) == 1
    steps = {r.data.tags["lmforge.stage"]: r for r in runs if r not in parents}
    assert set(TRACKED) <= set(steps)
    lineage = ("lmforge.git_commit", "lmforge.params_hash", "lmforge.data_version")
    for stage, step in steps.items():
        assert step.data.tags["mlflow.parentRunId"] == parents[0].info.run_id, stage
        assert step.info.status == "FINISHED", stage
        for tag in lineage:
            assert step.data.tags[tag] == parents[0].data.tags[tag], (stage, tag)
    # The data stages' inputs are MLflow datasets digested as DVC digests them: validate's raw
    # data carries the very md5 dvc.lock records for the stage's `data` dependency.
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    data_md5 = next(d["md5"] for d in lock["validate"]["deps"] if d["path"] == "data")
    inputs = {i.dataset.name: i.dataset for i in steps["validate"].inputs.dataset_inputs}
    assert inputs["raw-data"].digest == data_md5
    assert json.loads(inputs["raw-data"].source)["dvc_path"] == "data"
    assert {"validated"} == {i.dataset.name for i in steps["augment"].inputs.dataset_inputs}
    assert {"augmented"} == {i.dataset.name for i in steps["tokenize"].inputs.dataset_inputs}


def test_promoted_champion_predicts(project, first_repro):
    import mlflow

    out = run(str(BIN / "lmforge"), "promote", cwd=project)
    assert json.loads(out[out.index("{") :])["action"] == "promoted"
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/lmforge-classifier@champion")
    texts = ["Win a free prize now, click here", "Meeting moved to 3pm"]
    out = model.predict(texts)
    assert len(out) == len(texts) and set(out["label"]) <= {"ham", "spam"}


# Keys a stage reads only in a configuration the default run does not take, so the record of
# the default run cannot show them; each with the setting that makes the stage read it.
READ_WHEN_SET = {
    "validate": {  # finetune.sft_data set: its held-out pairs are what decontamination checks
        "finetune.sft_holdout_share",
        "finetune.prompt_field",
        "finetune.response_field",
    },
}


def test_dvc_yaml_declares_every_param_each_stage_reads(project, first_repro):
    """Changing any key a stage reads must re-run it: dvc.yaml's `params` cover all reads."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    read: dict[str, set[str]] = {}
    for line in (project / READS).read_text().splitlines():
        row = json.loads(line)
        read.setdefault(row["step"], set()).update(row["keys"])
    assert set(STAGES) <= set(read), sorted(read)
    for stage in STAGES:
        declared = [str(p) for p in stages[stage].get("params", [])]
        missing = sorted(
            key
            for key in read[stage]
            if not key.startswith(NOT_DEPENDENCIES)
            and not any(key == d or key.startswith(d + ".") for d in declared)
        )
        assert not missing, f"dvc.yaml stage {stage!r} reads {missing} but does not declare them"
        unread = [
            d
            for d in declared
            if not any(k == d or k.startswith(d + ".") for k in read[stage])
            and d not in READ_WHEN_SET.get(stage, ())
        ]
        assert not unread, f"dvc.yaml stage {stage!r} declares {unread} but never reads them"


def test_second_repro_has_nothing_to_do(project, first_repro):
    second = run(str(BIN / "dvc"), "repro", cwd=project)
    # inputs runs every time (always_changed); its file is the same, so nothing after it runs
    assert re.findall(r"Running stage '(\w+)'", second) == ["inputs"]
    assert "didn't change" in second or "up to date" in second
