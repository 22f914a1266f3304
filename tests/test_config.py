"""Config loading: params.yaml sections, presets, --set overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lmforge.config import Config, ConfigError, load_config, load_presets

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_load_and_match_every_section():
    cfg = load_config(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw) <= set(Config.__dataclass_fields__)
    assert cfg.pretrain.lr == raw["pretrain"]["lr"]
    assert cfg.launch.nnodes == raw["launch"]["nnodes"]


def test_preset_fills_model_and_params_override_it(tmp_path):
    presets = load_presets()
    params = tmp_path / "params.yaml"
    params.write_text("model:\n  preset: gpu-1b\n  n_layers: 3\n")
    cfg = load_config(params)
    assert cfg.model.d_model == presets["gpu-1b"]["d_model"]
    assert cfg.model.n_kv_heads == presets["gpu-1b"]["n_kv_heads"]
    assert cfg.model.n_layers == 3


def test_every_preset_builds_a_valid_model_section(tmp_path):
    for name in load_presets():
        cfg = load_config(None, [f"model.preset={name}"])
        assert cfg.model.d_model % cfg.model.n_heads == 0, name


def test_unknown_preset_names_the_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"model.preset.*cpu-tiny"):
        load_config(None, ["model.preset=gpu-900b"])


def test_override_types_are_read_as_yaml():
    cfg = load_config(
        None,
        ["pretrain.lr=3e-4", "pretrain.max_steps=7", "launch.node_selector={pool: a100}",
         "finetune.method=lora", "model.sliding_window=64"],
    )  # fmt: skip
    assert cfg.pretrain.lr == pytest.approx(3e-4)
    assert cfg.pretrain.max_steps == 7
    assert cfg.launch.node_selector == {"pool": "a100"}
    assert cfg.finetune.method == "lora"
    assert cfg.model.sliding_window == 64


def test_int_widens_to_float_but_not_the_reverse():
    assert load_config(None, ["pretrain.lr=1"]).pretrain.lr == 1.0
    with pytest.raises(ConfigError, match=r"pretrain.max_steps: expected int"):
        load_config(None, ["pretrain.max_steps=1.5"])


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("pretrain.nope=1", r"pretrain.nope: unknown key"),
        ("pretrain.lr=abc", r"pretrain.lr: expected float, got 'abc'"),
        ("pretrain.precision=fp8", r"pretrain.precision: expected one of 'fp32', 'bf16'"),
        ("nosection.x=1", r"nosection: unknown key"),
        ("pretrain.compile=maybe", r"pretrain.compile: expected bool"),
        ("pretrain=3", r"expected SECTION.KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_errors_in_the_file_name_the_file(tmp_path):
    params = tmp_path / "my-params.yaml"
    params.write_text("tokenizer:\n  vocab_size: lots\n")
    with pytest.raises(ConfigError) as info:
        load_config(params)
    assert str(params) in str(info.value)
    assert "tokenizer.vocab_size: expected int" in str(info.value)


def test_missing_explicit_params_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_params_hash_changes_with_any_value():
    a = load_config(None)
    b = load_config(None, ["augment.seed=7"])
    assert a.params_hash() == load_config(None).params_hash()
    assert a.params_hash() != b.params_hash()
