"""The search space of ``sweep.space`` as Optuna distributions, and a trial's params as config.

A dimension is named by its params.yaml key (``pretrain.lr``), in Optuna and in every output, so
a trial's params are its ``--set`` overrides and ``best.yaml`` is a params.yaml fragment.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

import yaml

from lmforge.config import Config, load_config_text
from lmforge.config.model import load_presets
from lmforge.config.sweep import SweepConfig, grid_points


def distributions(sweep: SweepConfig) -> dict[str, Any]:
    """``{key: optuna distribution}``; a grid sweep sees every axis as its list of points."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    for key, spec in sweep.space.items():
        kind = spec["type"]
        if sweep.sampler == "grid" or kind == "choice":
            out[key] = CategoricalDistribution(grid_points(spec))
        elif kind == "int":
            out[key] = IntDistribution(spec["low"], spec["high"])
        else:
            out[key] = FloatDistribution(spec["low"], spec["high"], log=kind == "loguniform")
    return out


def sampler(sweep: SweepConfig, seed: int | None = None):
    """TPE; for a grid, every point is queued (``grid``) and the sampler only names the study's
    (Optuna's GridSampler stops the study from inside ``tell``, which ask-and-tell cannot use)."""
    import optuna

    seed = sweep.seed if seed is None else seed
    if sweep.sampler == "grid":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def grid(sweep: SweepConfig) -> list[dict[str, Any]]:
    """Every point of the grid, in order (the first key varies slowest)."""
    axes = [grid_points(spec) for spec in sweep.space.values()]
    return [dict(zip(sweep.space, values, strict=True)) for values in itertools.product(*axes)]


def pruner(sweep: SweepConfig):
    import optuna

    if not sweep.pruning:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=sweep.prune_startup_trials, n_warmup_steps=sweep.prune_warmup_steps
    )


def overrides(params: dict[str, Any]) -> list[str]:
    """A trial's params as ``--set`` items (values in JSON, which YAML reads back unchanged)."""
    return [f"{key}={json.dumps(value)}" for key, value in params.items()]


def trial_config(
    cfg: Config, params: dict[str, Any], number: int, extra: Sequence[str] = ()
) -> Config:
    """``cfg`` with the trial's values, checked like any params file (ranges, cross-field rules).

    Pretrain trials train in this process (``launch.backend=inline``); ``extra``: more
    ``--set`` items, applied before the trial's values."""
    inline = ["launch.backend=inline"] if cfg.sweep.step == "pretrain" else []
    raw = cfg.to_dict()
    if "model.preset" in params:
        raw["model"] = without_preset_shape(raw["model"])
    text = yaml.safe_dump(raw, sort_keys=False)
    items = [*inline, *extra, *overrides(params)]
    return load_config_text(text, items, source=f"sweep trial {number}")


def without_preset_shape(model: dict[str, Any]) -> dict[str, Any]:
    """The model section less the keys its preset filled in, so that a trial's own preset does.

    A loaded config has the preset's shape written out; dumped as is, those keys would win over
    the trial's ``model.preset``. A key whose value differs from the preset's was set by hand
    and stays (it wins over any preset, as in params.yaml)."""
    preset = load_presets()[model["preset"]]
    return {k: v for k, v in model.items() if k not in preset or preset[k] != v}


def nested(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"pretrain.lr": 1e-3}`` -> ``{"pretrain": {"lr": 1e-3}}`` (a params.yaml fragment)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = value
    return out


def inside(spec: dict[str, Any], value: Any) -> bool:
    """Whether ``value`` is a point of the dimension ``spec`` (bounds inclusive)."""
    if spec["type"] == "choice":
        return value in spec["values"]
    return spec["low"] <= value <= spec["high"]
