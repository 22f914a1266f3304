"""What runs inside a component around its step: config from parameters, metrics, staging."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmforge.config import ConfigError, load_config
from lmforge.errors import LaunchError
from lmforge.kfp.dag import params_text
from lmforge.kfp.runtime import pretrain_on_backend, step_config
from lmforge.tracking import flat_metrics

REPO = Path(__file__).resolve().parents[1]


def test_step_config_rebuilds_the_config_and_exports_the_kfp_ids(monkeypatch):
    for key in ("LMFORGE_PIPELINE_RUN_ID", "KFP_RUN_ID", "KFP_TASK_NAME"):
        monkeypatch.delenv(key, raising=False)
    cfg = load_config(REPO / "params.yaml", ["model.preset=cpu-small"])
    got = step_config(params_text(cfg), ["pretrain.max_steps=3"], "run-42", "pretrain")
    assert got.model == cfg.model
    assert got.pretrain.max_steps == 3
    assert os.environ["LMFORGE_PIPELINE_RUN_ID"] == os.environ["KFP_RUN_ID"] == "run-42"
    assert os.environ["KFP_TASK_NAME"] == "pretrain"


@pytest.mark.parametrize(
    ("params", "overrides", "expected"),
    [
        (
            '{"pretrain": {"lr": "fast"}}',
            [],
            "pipeline parameter 'params': pretrain.lr: expected float",
        ),
        ("{}", ["pretrain.nope=1"], "pretrain.nope: unknown key"),
        ("pretrain: [", [], "pipeline parameter 'params': not valid YAML"),
    ],
)
def test_bad_parameters_name_the_parameter_and_the_key(params, overrides, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        step_config(params, overrides, "", "")


def test_flat_metrics_keeps_numbers_of_nested_mappings():
    values = {"a": 1, "b": {"c": 2.5, "d": "text", "e": [1]}, "f": True}
    assert flat_metrics(values) == {"a": 1.0, "b.c": 2.5}


def test_kubernetes_staging_is_cleaned_up_when_the_launch_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    tokenized = tmp_path / "tokenized"
    (tokenized / "blocks").mkdir(parents=True)
    (tokenized / "blocks" / "meta.json").write_text("{}")
    cfg = load_config(None, [f"launch.mount_path={tmp_path / 'volume'}"])
    with pytest.raises(LaunchError, match="no Kubernetes credentials"):
        pretrain_on_backend(cfg, tokenized, tmp_path / "out", "kubernetes", "run-7")
    assert not (tmp_path / "volume" / "kfp" / "run-7").exists()
    assert not (tmp_path / "out").exists()
