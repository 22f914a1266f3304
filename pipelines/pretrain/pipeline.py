"""Pretrain pipeline: raw data -> validate -> augment -> tokenize -> pretrain (PyTorchJob or
TrainJob: the ``launch_api`` parameter)."""

from kfp import dsl

from lmforge.config import Config
from lmforge.kfp.dag import common_args, data_to_pretrained, params_text
from lmforge_pipelines.ops import Ops


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
        launch_api: str = cfg.launch.api,
    ):
        args = common_args(params, overrides)
        data_to_pretrained(ops, cfg, data_uri, backend, args, launch_api)

    return pretrain_pipeline
