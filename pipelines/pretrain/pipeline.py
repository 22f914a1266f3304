"""Pretrain pipeline: raw data -> validate -> augment -> tokenize -> pretrain (PyTorchJob)."""

from kfp import dsl

from lmforge.config import Config
from lmforge.kfp.dag import Ops, common_args, params_text, prepare_data, schedule


def build(cfg: Config) -> dsl.graph_component.GraphComponent:
    """The pipeline with its parameters' defaults taken from ``cfg`` (``params.yaml``)."""
    ops = Ops.on_image(cfg.kubeflow.image)

    @dsl.pipeline(
        name=f"{cfg.kubeflow.pipeline_prefix}-pretrain",
        description="Validate, augment and tokenize the raw data; pretrain the decoder LM.",
    )
    def pretrain_pipeline(
        data_uri: str = cfg.kubeflow.data_uri,
        params: str = params_text(cfg),
        overrides: list = [],  # noqa: B006 (a KFP default, never mutated)
        backend: str = cfg.kubeflow.pretrain_backend,
    ):
        args = common_args(params, overrides)
        augmented = prepare_data(ops, cfg, data_uri, args)
        tokenized = schedule(
            ops.tokenize(augmented=augmented.outputs["augmented"], **args), cfg, "tokenize"
        )
        schedule(
            ops.pretrain(tokenized=tokenized.outputs["tokenized"], backend=backend, **args),
            cfg, "pretrain",
        )  # fmt: skip

    return pretrain_pipeline
