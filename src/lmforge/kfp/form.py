"""The KFP run form as the pipelines build it: typed, described pipeline parameters and the
``settings`` task that turns them into every step's config overrides (``form_rules``).

The form differs by pipeline (the pretrain pipeline has no gate), so ``form_pipeline`` builds the
``@dsl.pipeline`` function's signature and docstring (the descriptions the KFP UI shows) from a
list of inputs rather than each pipeline writing them out. No ``from __future__ import
annotations``: KFP reads the component's annotations as types.
"""

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from kfp import dsl

from lmforge.config import Config
from lmforge.kfp.factory import lmforge_component, on_image
from lmforge.kfp.form_rules import FIELDS, OVERRIDES_HELP

# A pipeline input that is not a config setting: (name, type, default, description).
Input = tuple[str, type, Any, str]

# The form's groups of fields, by what a pipeline runs.
PRETRAIN_FIELDS = ("model_preset", "pretrain_steps", "pretrain_lr", "launch_api")
FINETUNE_FIELDS = ("finetune_task", "finetune_method", "finetune_lr", "min_primary")


# The inputs that are not settings, as the pipelines name them: (kubeflow key, description).
# fmt: off
URIS_AND_BACKEND = {
    "data_uri": ("data_uri", "The raw data folder (corpus/, labelled/): an object-store URI "
                 "the importer reads."),
    "pretrained_uri": ("pretrained_uri", "A pretrain output (its model/ folder holds the "
                       "decoder) to start from."),
    "tokenized_uri": ("tokenized_uri", "A tokenize output (blocks/ and the tokenizer) to "
                      "train on."),
    "backend": ("pretrain_backend", "Where pretraining runs: kubernetes (a training job on the "
                "cluster) or local (in the step's pod)."),
}
# fmt: on


def inputs(cfg: Config, *names: str) -> list[Input]:
    """The ``URIS_AND_BACKEND`` inputs ``names``, their defaults from ``cfg.kubeflow``."""
    rows = [(n, *URIS_AND_BACKEND[n]) for n in names]
    return [(n, str, getattr(cfg.kubeflow, key), text) for n, key, text in rows]


@lmforge_component
def settings(params: str, form: dict, overrides: list) -> list:
    """The run form (``form``: field name -> value) and ``overrides`` as the overrides every step
    applies on ``params``; the config they make is checked here, before any step runs."""
    from lmforge.config import load_config_text
    from lmforge.kfp.form_rules import form_overrides
    from lmforge.kfp.runtime import PARAMS_SOURCE

    merged = form_overrides(form, list(overrides or []))
    load_config_text(params, merged, source=PARAMS_SOURCE)
    return merged


def settings_task(image: str, params: str, form: dict[str, Any], overrides: Any) -> Any:
    """The pipeline's first task: its output is every step's ``overrides``."""
    task = on_image(settings, image)(params=params, form=form, overrides=overrides)
    task.set_display_name("settings")
    return task


def form_pipeline(
    cfg: Config,
    name: str,
    description: str,
    inputs: Sequence[Input],
    fields: Sequence[str],
    body: Callable[..., None],
) -> Any:
    """A ``@dsl.pipeline`` named ``<kubeflow.pipeline_prefix>-<name>`` whose parameters are
    ``inputs``, the form ``fields`` (defaults from ``cfg``) and ``overrides``, each described;
    it calls ``body(fields=<field name -> value>, overrides=..., **<inputs>)``."""
    rows = [
        *inputs,
        *((f, FIELDS[f].kind, FIELDS[f].default(cfg), FIELDS[f].description) for f in fields),
        ("overrides", list, [], OVERRIDES_HELP),
    ]
    names = [row[0] for row in rows]

    def pipeline(*values):  # KFP passes the parameters positionally, in signature order
        given = dict(zip(names, values, strict=True))
        body(fields={f: given.pop(f) for f in fields}, **given)  # tasks, no pipeline outputs

    pipeline.__signature__ = inspect.Signature(
        [
            inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d, annotation=t)
            for n, t, d, _ in rows
        ]
    )
    pipeline.__name__ = f"{name}_pipeline"
    args = "\n".join(f"    {n}: {text}" for n, _, _, text in rows)
    pipeline.__doc__ = f"{description}\n\nArgs:\n{args}\n"
    prefix = cfg.kubeflow.pipeline_prefix
    return dsl.pipeline(name=f"{prefix}-{name}", description=description)(pipeline)
