"""Finetune pipeline: from a pretrain pipeline's model and blocks, fine-tune, evaluate, register.

The raw data goes through validate and augment again (seeded, so the labelled splits are the
ones the pretrain run saw); registration runs only when the evaluation gate passes.
"""

from kfp import dsl
from kfp.dsl import Dataset, Model

from lmforge.config import Config
from lmforge.kfp.dag import (
    common_args,
    finetune_evaluate_register,
    import_artifact,
    params_text,
    prepare_data,
)
from lmforge_pipelines.ops import Ops


def build(
    cfg: Config,
    name: str = "finetune",
    description: str = "Fine-tune a classifier from a pretrained model, evaluate it, register it "
    "when it passes the gate.",
) -> dsl.graph_component.GraphComponent:
    """The pipeline with its parameters' defaults taken from ``cfg`` (``params.yaml``); ``name``
    and ``description``: a variant's (``lmforge_pipelines.sft``)."""
    ops = Ops.on_image(cfg.kubeflow.image)

    @dsl.pipeline(name=f"{cfg.kubeflow.pipeline_prefix}-{name}", description=description)
    def finetune_pipeline(
        data_uri: str = cfg.kubeflow.data_uri,
        pretrained_uri: str = cfg.kubeflow.pretrained_uri,
        tokenized_uri: str = cfg.kubeflow.tokenized_uri,
        params: str = params_text(cfg),
        overrides: list = [],  # noqa: B006 (a KFP default, never mutated)
    ):
        args = common_args(params, overrides)
        augmented = prepare_data(ops, cfg, data_uri, args)
        pretrained = import_artifact(pretrained_uri, Model, "pretrained-model")
        tokenized = import_artifact(tokenized_uri, Dataset, "tokenized-data")
        finetune_evaluate_register(
            ops, cfg, pretrained.output, tokenized.output, augmented.outputs["augmented"], args
        )

    return finetune_pipeline
