"""Full pipeline: validate -> augment -> tokenize -> pretrain -> finetune -> evaluate -> register.

Registration runs only when the evaluation gate passes (``dsl.If`` on evaluate's output); with
``kubeflow.deploy: true`` a deploy step follows it (promote, then KServe InferenceServices).
"""

from kfp import dsl

from lmforge.config import Config
from lmforge.kfp.dag import (
    common_args,
    data_to_pretrained,
    finetune_evaluate_register,
    params_text,
)
from lmforge_pipelines.ops import Ops


def build(cfg: Config) -> dsl.graph_component.GraphComponent:
    """The pipeline with its parameters' defaults taken from ``cfg`` (``params.yaml``)."""
    ops = Ops.on_image(cfg.kubeflow.image)

    @dsl.pipeline(
        name=f"{cfg.kubeflow.pipeline_prefix}-full",
        description="Raw data to a registered challenger: every lmforge step in one run.",
    )
    def full_pipeline(
        data_uri: str = cfg.kubeflow.data_uri,
        params: str = params_text(cfg),
        overrides: list = [],  # noqa: B006 (a KFP default, never mutated)
        backend: str = cfg.kubeflow.pretrain_backend,
        launch_api: str = cfg.launch.api,
    ):
        args = common_args(params, overrides)
        augmented, tokenized, pretrained = data_to_pretrained(
            ops, cfg, data_uri, backend, args, launch_api
        )
        finetune_evaluate_register(
            ops,
            cfg,
            pretrained.outputs["pretrained"],
            tokenized.outputs["tokenized"],
            augmented.outputs["augmented"],
            args,
            deploy=cfg.kubeflow.deploy,
        )

    return full_pipeline
