"""The KFP run form: the settings people change most as typed pipeline parameters.

Each ``Field`` is one input of the form (a KFP ``int``/``float``/``str`` parameter with the
``params.yaml`` value as its default and a description the UI shows) and the config key it sets.
The rest of the config is reached through the optional ``overrides`` list (``SECTION.KEY=VALUE``).
``form_overrides`` is the one place the form becomes config overrides; the pipeline's first task
(``lmforge.kfp.form.settings``) calls it and every step gets its output as its ``overrides``.
No kfp import here: the component's body imports this module inside the KFP executor.

The rule: each setting has one place. An override in the list that sets a form field's key to a
different value than the field holds is refused (the message names the field to use instead);
one that repeats the field's value is accepted. A form value is never silently beaten by the list,
nor the list by a form default the person did not touch.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lmforge.config import Config
from lmforge.config.loader import parse_override
from lmforge.errors import ConfigError


@dataclass(frozen=True)
class Field:
    name: str  # the pipeline parameter
    key: str  # the config key it sets, SECTION.KEY
    kind: type  # int, float or str: what the KFP form asks for
    description: str

    def default(self, cfg: Config) -> Any:
        section, key = self.key.split(".")
        return self.kind(getattr(getattr(cfg, section), key))


# fmt: off
FIELDS = {f.name: f for f in (
    Field("model_preset", "model.preset", str,
          "Model size preset (model.preset): cpu-tiny, cpu-small, gpu-125m, gpu-1b or gpu-7b."),
    Field("pretrain_steps", "pretrain.max_steps", int,
          "Pretraining optimizer steps (pretrain.max_steps)."),
    Field("pretrain_lr", "pretrain.lr", float, "Pretraining peak learning rate (pretrain.lr)."),
    Field("launch_api", "launch.api", str, "Training job API (launch.api): trainjob "
          "(Kubeflow Trainer v2) or pytorchjob (Training Operator v1)."),
    Field("finetune_task", "finetune.task", str,
          "Fine-tuning task (finetune.task): classification or sft (instruction tuning)."),
    Field("finetune_method", "finetune.method", str,
          "Fine-tuning method (finetune.method): full or lora."),
    Field("finetune_lr", "finetune.lr", float, "Fine-tuning peak learning rate (finetune.lr)."),
    Field("min_primary", "register.min_primary", float, "The classifier gate: the challenger "
          "registers only when its primary metric reaches this (register.min_primary)."),
    Field("sft_min_primary", "register.sft_min_primary", float, "The SFT gate: the challenger "
          "registers only when its primary metric reaches this (register.sft_min_primary)."),
)}
# fmt: on
OVERRIDES_HELP = (
    "Any other setting, one SECTION.KEY=VALUE a line (e.g. pretrain.warmup_steps=10; "
    "docs/params.md lists them). A key of a field above is refused unless it repeats that "
    "field's value: set the field instead."
)


def form_overrides(values: dict[str, Any], overrides: Sequence[str]) -> list[str]:
    """The run's config overrides: the form's fields (``values``, by field name) then ``overrides``.

    Raises ``ConfigError`` when an override contradicts a field (see the module docstring)."""
    # Values come typed from Python, as text from KFP (a dict of parameters is substituted as text).
    values = {name: _typed(FIELDS[name], value) for name, value in values.items()}
    by_key = {FIELDS[name].key: (FIELDS[name], value) for name, value in values.items()}
    for item in overrides:
        path, value = parse_override(item)
        found = by_key.get(".".join(path))
        if found is None:
            continue
        field, wanted = found
        if not _same(field, value, wanted):
            raise ConfigError(
                f"pipeline parameter 'overrides': {item!r} contradicts the run form's field "
                f"{field.name} ({wanted!r}); set {field.name} to the value you want and drop "
                f"{field.key} from the overrides"
            )
    # JSON is YAML: strings stay strings whatever they spell, numbers stay numbers.
    fields = [f"{FIELDS[name].key}={json.dumps(value)}" for name, value in values.items()]
    return [*fields, *overrides]


def _typed(field: Field, value: Any) -> Any:
    try:
        if field.kind is int and isinstance(value, str | float):
            number = float(value)
            if number.is_integer():
                return int(number)
            raise ValueError(value)
        return field.kind(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"pipeline parameter {field.name!r}: {value!r} is not "
            f"{'a whole number' if field.kind is int else 'a number'}; enter one for {field.key}"
        ) from None


def _same(field: Field, value: Any, wanted: Any) -> bool:
    try:
        return _typed(field, value) == wanted
    except ConfigError:
        return False
