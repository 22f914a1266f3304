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
        [
            "pretrain.lr=3e-4",
            "pretrain.max_steps=7",
            "launch.node_selector={pool: a100}",
            "finetune.method=lora",
            "model.sliding_window=64",
        ],
    )
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
        ("pretrain.lr=abc", r"pretrain.lr: expected float, got a string: 'abc'"),
        ("pretrain.precision=fp8", r"pretrain.precision: expected one of 'auto', 'fp32', 'bf16'"),
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


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("pretrain.max_steps=-1", "pretrain.max_steps: -1", ">= 1"),
        ("pretrain.grad_accum_steps=0", "pretrain.grad_accum_steps: 0", ">= 1"),
        ("pretrain.lr=-1", "pretrain.lr: -1.0", "> 0 and <= 1"),
        ("pretrain.micro_batch_size=0", "pretrain.micro_batch_size: 0", ">= 1"),
        ("pretrain.keep_last=0", "pretrain.keep_last: 0", ">= 1"),
        ("finetune.max_steps=-1", "finetune.max_steps: -1", ">= 0"),  # 0: no cap on max_epochs
        ("finetune.max_epochs=-1", "finetune.max_epochs: -1.0", ">= 0 and <= 1000"),
        ("augment.share=1.5", "augment.share: 1.5", ">= 0 and <= 1"),
        ("data.test_share=0", "data.test_share: 0.0", "> 0 and < 1"),
        ("launch.master_port=70000", "launch.master_port: 70000", ">= 1 and <= 65535"),
    ],
)
def test_out_of_range_values_name_file_key_value_and_range(tmp_path, override, key, allowed):
    params = tmp_path / "params.yaml"
    params.write_text("pretrain:\n  seed: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(params, [override])
    message = str(info.value)
    assert message.startswith(f"{params}: {key} is out of range")
    assert message.endswith(f"allowed: {allowed}")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("pretrain:\n  lr: 2026-12-01\n", r"pretrain.lr: date value 2026-12-01 is not a plain"),
        ("data:\n  split_salt: 2026-12-01\n", r"data.split_salt: date value .* quote it"),
        ("pretrain:\n  max_steps: [1, 2]\n", r"pretrain.max_steps: expected int, got a list"),
        ("data:\n  labels: spam\n", r"data.labels: expected list\[str\], got a string"),
        ("pretrain: 3\n", r"pretrain: expected a mapping of keys"),
        ("pretrain:\n  lr: .nan\n", r"pretrain.lr: expected a number, got NaN"),
    ],
)
def test_yaml_values_of_the_wrong_kind_are_one_line_errors(tmp_path, text, pattern):
    params = tmp_path / "params.yaml"
    params.write_text(text)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(params)
    assert str(info.value).startswith(str(params))


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["data.validation_share=0.5", "data.test_share=0.5"], r"data.test_share: .* \(sum < 1\)"),
        (["model.n_heads=5"], r"model.n_heads: 5 must divide model.d_model"),
        (["tokenizer.eos_token=<|eos|>"], r"tokenizer.eos_token: .*special_tokens"),
        (["launch.gpus_per_node=8"], r"launch.nproc_per_node: 1 but launch.gpus_per_node=8"),
        (
            ["launch.api=pytorchjob", "launch.elastic_min_nodes=1"],
            r"launch.elastic_min_nodes: set both",
        ),
        (["register.champion_alias=previous"], r"register.champion_alias: the three aliases"),
        (["kubeflow.gpu_steps=[train]"], r"kubeflow.gpu_steps: unknown step 'train'"),
    ],
)
def test_cross_field_rules_are_checked_where_the_section_is_defined(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, overrides)


def test_sections_check_themselves_when_built_in_code():
    from lmforge.config import PretrainConfig

    with pytest.raises(ConfigError, match=r"pretrain.max_steps: 0 is out of range"):
        PretrainConfig(max_steps=0)


def test_config_error_is_an_lmforge_error_with_exit_code_2():
    from lmforge.errors import LmforgeError

    assert issubclass(ConfigError, LmforgeError)
    assert ConfigError.exit_code == 2
