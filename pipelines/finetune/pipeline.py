"""Finetune pipeline: from a pretrain pipeline's model and blocks, fine-tune, evaluate, register.

The raw data goes through validate and augment again (seeded, so the labelled splits are the
ones the pretrain run saw); registration runs only when the evaluation gate passes. The run form
(``lmforge.kfp.form``): the inputs, the finetune settings and the gate as typed fields, the rest
as ``overrides``.
"""

from collections.abc import Sequence

from kfp import dsl
from kfp.dsl import Dataset, Model

from lmforge.config import Config
from lmforge.kfp import form
from lmforge.kfp.dag import finetune_evaluate_register, form_args, import_artifact, prepare_data
from lmforge_pipelines.ops import Ops


def build(
    cfg: Config,
    name: str = "finetune",
    description: str = "Fine-tune a classifier from a pretrained model, evaluate it, register it "
    "when it passes the gate.",
    fields: Sequence[str] = form.FINETUNE_FIELDS,
) -> dsl.graph_component.GraphComponent:
    """The pipeline with its parameters' defaults taken from ``cfg`` (``params.yaml``); ``name``,
    ``description`` and the form's ``fields``: a variant's (``lmforge_pipelines.sft``)."""
    ops = Ops.on_image(cfg.kubeflow.image)

    def finetune(data_uri, pretrained_uri, tokenized_uri, fields, overrides):
        args = form_args(cfg, fields, overrides)
        augmented = prepare_data(ops, cfg, data_uri, args)
        pretrained = import_artifact(pretrained_uri, Model, "pretrained-model")
        tokenized = import_artifact(tokenized_uri, Dataset, "tokenized-data")
        finetune_evaluate_register(
            ops, cfg, pretrained.output, tokenized.output, augmented.outputs["augmented"], args
        )

    inputs = form.inputs(cfg, "data_uri", "pretrained_uri", "tokenized_uri")
    return form.form_pipeline(cfg, name, description, inputs, fields, finetune)
