"""Multimodal pipeline: from validated image-text splits and a pretrained decoder, align the
vision encoder and projector, instruction-tune on pairs made from the captions, and evaluate
against the same model without the image (docs/multimodal.md).

``images_uri`` is the image-validate (or image-augment) output: ``train/``, ``val/``, ``test/``
split folders; ``pretrained_uri`` the pretrain output (its ``model/`` is the decoder unless
``multimodal.decoder`` or ``multimodal.base_model`` is set). The evaluate task's output says
whether the gate passed; registration (``lmforge image-register``) is not a task here yet.
"""

from kfp import dsl
from kfp.dsl import Dataset, Model

from lmforge.config import Config
from lmforge.kfp.dag import common_args, import_artifact, params_text, schedule
from lmforge_components import multimodal_align, multimodal_evaluate, multimodal_instruct


def build(cfg: Config) -> dsl.graph_component.GraphComponent:
    """The pipeline with its parameters' defaults taken from ``cfg`` (``params.yaml``)."""
    image = cfg.kubeflow.image
    align, instruct, evaluate = (
        multimodal_align.build(image),
        multimodal_instruct.build(image),
        multimodal_evaluate.build(image),
    )

    @dsl.pipeline(
        name=f"{cfg.kubeflow.pipeline_prefix}-multimodal",
        description="Align a vision encoder to the pretrained decoder, instruction-tune it on "
        "image question/answer pairs, evaluate it against the text-only baseline.",
    )
    def multimodal_pipeline(
        images_uri: str = "",
        pretrained_uri: str = cfg.kubeflow.pretrained_uri,
        params: str = params_text(cfg),
        overrides: list = [],  # noqa: B006 (a KFP default, never mutated)
    ):
        args = common_args(params, overrides)
        images = import_artifact(images_uri, Dataset, "image-text-splits")
        pretrained = import_artifact(pretrained_uri, Model, "pretrained-model")
        aligned = schedule(
            align(pretrained=pretrained.output, images=images.output, **args), cfg, "align"
        )
        instructed = schedule(
            instruct(aligned=aligned.outputs["aligned"], images=images.output, **args),
            cfg,
            "instruct",
        )
        schedule(
            evaluate(instructed=instructed.outputs["instructed"], images=images.output, **args),
            cfg,
            "evaluate",
        )

    return multimodal_pipeline
