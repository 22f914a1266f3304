"""The KFP run form: the most changed settings as typed, described pipeline parameters with
params.yaml's defaults, the rest as ``overrides``, merged once by the ``settings`` task."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lmforge.config import load_config, load_config_text
from lmforge.errors import ConfigError, PipelineError
from lmforge.kfp.dag import form_args, params_text
from lmforge.kfp.form import PRETRAIN_FIELDS, form_pipeline
from lmforge.kfp.form_rules import FIELDS, form_overrides
from lmforge.kfp.local import init_local, latest_run, task_output
from lmforge_pipelines.compile import PIPELINES
from lmforge_pipelines.run_local import run_local

REPO = Path(__file__).resolve().parents[1]
KFP_TYPES = {int: "NUMBER_INTEGER", float: "NUMBER_DOUBLE", str: "STRING"}
# multimodal keeps its own params/overrides inputs (its form is its owner's to build).
FORM_PIPELINES = [name for name in PIPELINES if name != "multimodal"]


def form_inputs(name: str) -> dict:
    text = (REPO / "pipelines" / name / "pipeline.yaml").read_text()
    return next(yaml.safe_load_all(text))["root"]["inputDefinitions"]["parameters"]


@pytest.mark.parametrize("name", FORM_PIPELINES)
def test_the_form_is_typed_described_and_defaults_to_params_yaml(name):
    cfg = load_config(REPO / "params.yaml", ["finetune.task=sft"] if name == "sft" else [])
    inputs = form_inputs(name)
    assert "params" not in inputs  # no JSON to edit by hand
    assert inputs["overrides"]["parameterType"] == "LIST" and inputs["overrides"]["isOptional"]
    for input_name, spec in inputs.items():
        assert spec["description"].strip(), f"{name}: {input_name} has no description"
    fields = [f for f in inputs if f in FIELDS]
    for field in fields:
        section, key = FIELDS[field].key.split(".")
        expected = getattr(getattr(cfg, section), key)
        assert inputs[field]["defaultValue"] == expected, f"{name}: {field} drifted"
        assert inputs[field]["parameterType"] == KFP_TYPES[FIELDS[field].kind]


def test_the_full_form_has_the_most_changed_settings():
    most_changed = {"model_preset", "pretrain_steps", "pretrain_lr", "launch_api"}
    most_changed |= {"finetune_task", "finetune_method", "finetune_lr", "min_primary"}
    assert most_changed <= set(form_inputs("full"))
    assert {"finetune_task", "sft_min_primary"} <= set(form_inputs("sft"))


def test_form_values_come_first_typed_from_kfp_text_then_the_overrides():
    form = {"pretrain_steps": "12", "pretrain_lr": "0.01", "model_preset": "null"}
    got = form_overrides(form, ["pretrain.warmup_steps=3"])
    assert got == [
        "pretrain.max_steps=12",
        "pretrain.lr=0.01",
        'model.preset="null"',  # a string field stays a string whatever it spells
        "pretrain.warmup_steps=3",
    ]


def test_an_override_repeating_a_field_is_accepted_one_contradicting_it_is_refused():
    form = {"pretrain_lr": 0.002, "pretrain_steps": 560}
    assert form_overrides(form, ["pretrain.lr=2e-3", "pretrain.max_steps=560"])[-2:] == [
        "pretrain.lr=2e-3",
        "pretrain.max_steps=560",
    ]
    with pytest.raises(ConfigError, match=r"'pretrain.lr=0.01' contradicts .* field pretrain_lr"):
        form_overrides(form, ["pretrain.lr=0.01"])
    with pytest.raises(ConfigError, match="'pretrain_steps': 'many' is not a whole number"):
        form_overrides({"pretrain_steps": "many"}, [])
    with pytest.raises(ConfigError, match=r"'pretrain_steps': '1\.5' is not a whole number"):
        form_overrides({"pretrain_steps": "1.5"}, [])


def test_the_settings_task_hands_every_step_the_forms_config(tmp_path):
    """KFP's local runner substitutes the form into the settings task; a new preset brings
    its own shape (params_text leaves the shape to the preset)."""
    cfg = load_config(REPO / "params.yaml")
    pipeline = form_pipeline(
        cfg, "form-check", "the settings task alone", [], PRETRAIN_FIELDS,
        lambda fields, overrides: form_args(cfg, fields, overrides),
    )  # fmt: skip
    init_local(tmp_path)
    pipeline(model_preset="cpu-small", pretrain_lr=0.01, overrides=["pretrain.warmup_steps=3"])
    overrides = task_output(latest_run(tmp_path, "lmforge-form-check") / "settings")
    got = load_config_text(params_text(cfg), overrides)
    assert got == load_config(
        REPO / "params.yaml",
        ["model.preset=cpu-small", "pretrain.lr=0.01", "pretrain.warmup_steps=3"],
    )


def test_a_contradicting_override_stops_the_run_before_any_step(tmp_path, capfd):
    cfg = load_config(REPO / "params.yaml")
    with pytest.raises(PipelineError, match="settings"):
        run_local(
            cfg, "pretrain", workdir=tmp_path / "kfp", data_dir=tmp_path,
            arguments={"overrides": ["pretrain.lr=0.5"]},
        )  # fmt: skip
    logs = capfd.readouterr()
    logs = logs.out + logs.err
    assert "contradicts the run form's field pretrain_lr" in logs
    assert "'settings'" in logs and "'validate'" not in logs  # no step started
