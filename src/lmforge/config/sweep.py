"""Config of ``lmforge sweep``: trials of one training step over a search space (Optuna)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from lmforge.config.schema import Section, section_class, setting

# What each kind of dimension needs: the keys it must have and the keys it may not have.
KINDS: dict[str, tuple[set[str], set[str]]] = {
    "loguniform": ({"low", "high"}, {"values"}),
    "uniform": ({"low", "high"}, {"values"}),
    "int": ({"low", "high"}, {"values"}),
    "choice": ({"values"}, {"low", "high"}),
}
SPEC_KEYS = {"type", "low", "high", "values"}
GRID_KINDS = {"int", "choice"}  # a grid needs finitely many points
MAX_GRID = 10_000  # points of a grid sweep (a typo in an int range, not a plan)
# Model keys a scaling rung may set: the shape. The context (max_seq_len) stays the model
# section's for every rung, so every rung's tokens are the same kind of tokens.
SHAPE_KEYS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff")


# Objectives that are costs: lower is better, though lmforge.metrics.greater_is_better (which
# judges quality metrics: losses and perplexities lower, scores higher) would say otherwise.
COST_OBJECTIVES = ("train_seconds", "peak_memory_bytes")


def objective_direction(objective: str) -> Literal["minimize", "maximize"]:
    """Which way ``objective`` is better, so a sweep can never keep the worst trial."""
    from lmforge.metrics import greater_is_better  # numpy: only when a sweep asks

    if objective in COST_OBJECTIVES or not greater_is_better(objective):
        return "minimize"
    return "maximize"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class SweepConfig(Section):
    """Hyper-parameter search: trials of one step, run with Optuna in this process."""

    name = "sweep"

    step: Literal["pretrain", "finetune"] = setting(
        "pretrain", "The step each trial runs (pretrain: inline, in this process)."
    )
    space: dict[str, dict[str, Any]] = setting(
        {
            "pretrain.lr": {"type": "loguniform", "low": 5e-4, "high": 8e-3},
            "pretrain.warmup_steps": {"type": "int", "low": 0, "high": 112},
        },
        "Search space: SECTION.KEY -> {type: loguniform|uniform|int|choice, low, high} "
        "(choice: {type: choice, values: [...]}); int bounds are inclusive.",
    )
    objective: str = setting(
        "val_loss", "The metric each trial is judged by: a key of the step's metrics.json."
    )
    direction: Literal["auto", "minimize", "maximize"] = setting(
        "auto",
        "Which way the objective is better: auto follows from its name (a loss or perplexity, "
        "time or memory is minimized, anything else, e.g. val_macro_f1, maximized); an explicit "
        "minimize or maximize must agree with that.",
    )
    n_trials: int = setting(
        8, "Trials of the sweep in all; a resumed sweep runs only the ones missing.", ge=1
    )
    sampler: Literal["tpe", "grid"] = setting(
        "tpe", "tpe: Optuna's TPE sampler; grid: every combination (int and choice only)."
    )
    seed: int = setting(0, "Seed of the sampler (which points TPE tries).")
    pruning: bool = setting(
        True,
        "Stop a trial early (median pruner) when its validation loss is worse than the median "
        "of earlier trials at the same step.",
    )
    prune_startup_trials: int = setting(
        3, "Trials that complete before any trial may be pruned (the median needs a few).", ge=0
    )
    prune_warmup_steps: int = setting(
        0, "Optimizer steps before a trial may be pruned (its first evaluations are noisy).", ge=0
    )
    study_name: str = setting(
        "lmforge-sweep", "Optuna study name; a rerun with the same name resumes the study."
    )
    parallelism: int = setting(
        1,
        "Trials (scaling rungs) at once on this machine, each in its own process with an even "
        "share of the cores as torch threads (lmforge.cores).",
        ge=1,
    )
    # The scaling study (lmforge sweep --scaling, docs/sweeps.md#scaling-study).
    scaling_sizes: list[str | dict[str, int | None]] = setting(
        [
            {"n_layers": 2, "d_model": 64, "n_heads": 2},
            {"n_layers": 3, "d_model": 96, "n_heads": 3},
            "cpu-tiny",
            {"n_layers": 5, "d_model": 160, "n_heads": 5},
            {"n_layers": 6, "d_model": 192, "n_heads": 6},
        ],
        "Model sizes of the scaling ladder: a preset name or a mapping of model shape keys "
        "(n_layers, d_model, n_heads, n_kv_heads, d_ff) over the model section.",
    )
    scaling_tokens: list[int] = setting(
        [250_000, 500_000, 1_000_000],
        "Token budgets of the ladder (tokens each rung trains on; rounded to whole steps of "
        "pretrain's global batch). Every size trains once on every budget.",
    )
    scaling_flops: float = setting(
        1e15,
        "The FLOPs budget C (= 6 N D) the study answers for: the compute-optimal N and D.",
        gt=0,
    )
    scaling_n_count: Literal["non_embedding", "total"] = setting(
        "non_embedding",
        "N of the fit: non_embedding (Kaplan et al.: blocks and final norm, no token embedding "
        "or output head) or total (every unique parameter).",
    )
    scaling_bootstrap: int = setting(
        50,
        "Bootstrap refits of the law on resampled rungs (the 5-95% range of each parameter).",
        ge=0,
    )

    @property
    def goal(self) -> Literal["minimize", "maximize"]:
        """The direction the sweep optimises: the objective's own (``objective_direction``)."""
        return objective_direction(self.objective)

    def check(self) -> None:
        self._check_scaling()
        if self.direction != "auto" and self.direction != self.goal:
            better = "higher" if self.goal == "maximize" else "lower"
            self.fail(
                "direction",
                f"{self.direction} contradicts sweep.objective {self.objective} (a {better} "
                f"value is better): set sweep.direction: auto (or {self.goal}) in params.yaml",
            )
        if not self.space:
            self.fail("space", "is empty; name at least one SECTION.KEY to search")
        if not self.objective.strip():
            self.fail("objective", "is empty; name a key of the step's metrics.json")
        if not self.study_name.strip():
            self.fail("study_name", "is empty")
        for key, spec in self.space.items():
            self._check_dimension(key, spec)
        if self.sampler == "grid":
            bad = [k for k, s in self.space.items() if s["type"] not in GRID_KINDS]
            if bad:
                self.fail(
                    f"space.{bad[0]}",
                    f"type {self.space[bad[0]]['type']} has no grid; sampler grid needs "
                    "int or choice dimensions (or use sampler tpe)",
                )
            if grid_size(self.space) > MAX_GRID:
                self.fail("space", f"the grid has more than {MAX_GRID} points; narrow it")

    def _check_scaling(self) -> None:
        """The ladder: enough distinct sizes and budgets for five parameters, known keys."""
        from lmforge.config.model import load_presets

        presets = load_presets()
        if len(self.scaling_sizes) < 2:
            self.fail("scaling_sizes", "needs at least 2 sizes for a scaling law")
        for i, size in enumerate(self.scaling_sizes):
            where = f"scaling_sizes[{i}]"
            if isinstance(size, str):
                if size not in presets:
                    self.fail(where, f"unknown preset {size!r}; choose one of {', '.join(presets)}")
                continue
            unknown = sorted(set(size) - set(SHAPE_KEYS))
            if unknown:
                self.fail(f"{where}.{unknown[0]}", f"not a shape key; use {', '.join(SHAPE_KEYS)}")
            if not size:
                self.fail(where, "is empty; name a preset or give shape keys")
            bad = [k for k, v in size.items() if v is not None and v < 1]
            if bad:
                self.fail(f"{where}.{bad[0]}", f"{size[bad[0]]!r} must be >= 1")
        if len(self.scaling_tokens) < 2 or len(set(self.scaling_tokens)) < len(self.scaling_tokens):
            self.fail("scaling_tokens", "needs at least 2 different token budgets, each once")
        if any(t < 1 for t in self.scaling_tokens):
            self.fail(
                "scaling_tokens", f"every budget must be >= 1 token, got {self.scaling_tokens}"
            )
        if len(self.scaling_sizes) * len(self.scaling_tokens) < 5:
            self.fail("scaling_sizes", "sizes x budgets must give at least 5 rungs (5 parameters)")

    def _check_dimension(self, key: str, spec: dict[str, Any]) -> None:
        where = f"space.{key}"
        field_type = _field_type(key)
        if field_type is None:
            self.fail(where, "unknown key; write SECTION.KEY of params.yaml, e.g. pretrain.lr")
        if key.split(".")[0] == "sweep":
            self.fail(where, "a sweep cannot search its own section")
        unknown = sorted(set(spec) - SPEC_KEYS)
        if unknown:
            self.fail(f"{where}.{unknown[0]}", f"unknown key; valid keys: {sorted(SPEC_KEYS)}")
        kind = spec.get("type")
        if kind not in KINDS:
            self.fail(f"{where}.type", f"{kind!r}: expected one of {', '.join(KINDS)}")
        needs, forbids = KINDS[kind]
        missing, extra = sorted(needs - set(spec)), sorted(forbids & set(spec))
        if missing:
            self.fail(where, f"type {kind} needs {', '.join(missing)}")
        if extra:
            self.fail(where, f"type {kind} takes no {', '.join(extra)}")
        if kind == "choice":
            values = spec["values"]
            if not isinstance(values, list) or not values:
                self.fail(f"{where}.values", "expected a non-empty list of values")
            if not all(v is None or isinstance(v, bool | int | float | str) for v in values):
                self.fail(f"{where}.values", "each value must be a number, string or boolean")
            return
        low, high = spec["low"], spec["high"]
        if not (_number(low) and _number(high)):
            self.fail(where, f"low and high must be numbers, got {low!r} and {high!r}")
        if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
            self.fail(where, f"type int needs integer low and high, got {low!r} and {high!r}")
        if low > high or (kind != "int" and low == high):
            self.fail(where, f"low {low!r} must be below high {high!r}")
        if kind == "loguniform" and low <= 0:
            self.fail(where, f"type loguniform needs low > 0, got {low!r}")
        if kind != "int" and field_type is int:
            self.fail(where, f"{key} is an integer; use type int or choice")
        if field_type not in (int, float):
            self.fail(where, f"{key} is not a number; use type choice")


def _field_type(key: str) -> Any:
    """The annotation of ``section.key`` in the whole config, or None when there is no such key."""
    section, _, name = key.partition(".")
    cls = section_class(section)
    if cls is None or name not in {f.name for f in dataclasses.fields(cls)}:
        return None
    tp = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        tp = args[0]  # int | None: an int that may be unset
    return tp


def grid_points(spec: dict[str, Any]) -> list[Any]:
    """Every value of an int or choice dimension (the grid sampler's axis)."""
    if spec["type"] == "int":
        return list(range(spec["low"], spec["high"] + 1))
    return list(spec["values"])


def grid_size(space: dict[str, dict[str, Any]]) -> int:
    def axis(spec: dict[str, Any]) -> int:
        if spec["type"] == "int":
            return max(0, spec["high"] - spec["low"] + 1)
        return len(spec["values"])

    return math.prod(axis(s) for s in space.values())
