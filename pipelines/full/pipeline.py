"""Full pipeline: validate -> augment -> tokenize -> pretrain -> finetune -> evaluate -> register.

Registration runs only when the evaluation gate passes (``dsl.If`` on evaluate's output); with
``kubeflow.deploy: true`` a deploy step follows it (promote, then KServe InferenceServices). The
run form (``lmforge.kfp.form``): the data, the backend, the most changed settings as typed fields,
the rest as ``overrides``.
"""

from kfp import dsl

from lmforge.config import Config
from lmforge.kfp import form
from lmforge.kfp.dag import data_to_pretrained, finetune_evaluate_register, form_args
from lmforge_pipelines.ops import Ops


def build(cfg: Config) -> dsl.graph_component.GraphComponent:
    """The pipeline with its parameters' defaults taken from ``cfg`` (``params.yaml``)."""
    ops = Ops.on_image(cfg.kubeflow.image)

    def full(data_uri, backend, fields, overrides):
        args = form_args(cfg, fields, overrides)
        augmented, tokenized, pretrained = data_to_pretrained(ops, cfg, data_uri, backend, args)
        finetune_evaluate_register(
            ops,
            cfg,
            pretrained.outputs["pretrained"],
            tokenized.outputs["tokenized"],
            augmented.outputs["augmented"],
            args,
            deploy=cfg.kubeflow.deploy,
        )

    return form.form_pipeline(
        cfg,
        "full",
        "Raw data to a registered challenger: every lmforge step in one run.",
        form.inputs(cfg, "data_uri", "backend"),
        form.PRETRAIN_FIELDS + form.FINETUNE_FIELDS,
        full,
    )
