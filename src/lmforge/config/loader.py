"""Reading ``params.yaml`` (or params text) and ``--set`` overrides into the typed ``Config``."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import yaml

from lmforge.config.model import PRESETS_FILE, ModelConfig, load_presets
from lmforge.config.root import Config
from lmforge.config.schema import build
from lmforge.errors import ConfigError


def _apply_preset(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Fill the model section from its preset; keys written in params.yaml win over the preset."""
    model = raw.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError(f"{source}: model: expected a mapping of keys, got {model!r}")
    preset_name = model.get("preset", ModelConfig.preset)
    presets = load_presets()
    if not isinstance(preset_name, str) or preset_name not in presets:
        raise ConfigError(
            f"{source}: model.preset: unknown preset {preset_name!r}; "
            f"choose one of {', '.join(presets)} (defined in {PRESETS_FILE.name})"
        )
    merged = {**presets[preset_name], **model, "preset": preset_name}
    return {**raw, "model": merged}


def parse_override(item: str) -> tuple[list[str], Any]:
    """``pretrain.lr=3e-4`` -> (["pretrain", "lr"], 3e-4); the value is read as YAML."""
    example = "expected SECTION.KEY=VALUE, e.g. pretrain.lr=3e-4"
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: {example}")
    key, _, text = item.partition("=")
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"--set {item!r}: {example}")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    # YAML reads 3e-4 as a string (it wants 3.0e-4); accept the usual float spellings.
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value) if any(c in value for c in ".eE") else value
    return path, value


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    return raw


def load_config(
    params: str | Path | None = "params.yaml",
    overrides: list[str] | tuple[str, ...] = (),
) -> Config:
    """Read ``params`` (missing file: the embedded defaults), apply overrides, validate it all."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if params is not None:
        path = Path(params)
        source = str(path)
        if path.is_file():
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path}: cannot read the params file ({exc})") from None
            raw = _read_yaml(text, source)
        elif path.exists():
            raise ConfigError(f"{path}: not a file; pass --params PATH_TO_params.yaml")
        elif path != Path("params.yaml"):
            raise ConfigError(f"{path}: params file not found")
    return _config_from_raw(raw, overrides, source)


def load_config_text(
    text: str, overrides: list[str] | tuple[str, ...] = (), source: str = "params (text)"
) -> Config:
    """Like ``load_config`` for params YAML held in a string (a KFP pipeline parameter)."""
    return _config_from_raw(_read_yaml(text, source), overrides, source)


def _plain(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """A deep copy of plain JSON types; anything else (a YAML date, a set) names its key."""

    def walk(value: Any, where: str) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise ConfigError(
            f"{source}: {where}: {type(value).__name__} value {value!s} is not a plain YAML "
            "scalar; quote it to make it a string, or write the number or boolean expected"
        )

    return json.loads(json.dumps(walk(raw, "")))


def _config_from_raw(
    raw: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str
) -> Config:
    raw = _plain(raw, source)
    for item in overrides:
        keys, value = parse_override(item)
        node = raw
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: {key} is not a section")
        node[keys[-1]] = value
    raw = _apply_preset(raw, source)
    try:
        return build(Config, raw, "params")
    except ConfigError as exc:
        message = str(exc).removeprefix("params.").removeprefix("params: ")
        raise ConfigError(f"{source}: {message}") from None
