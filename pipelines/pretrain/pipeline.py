"""Pretrain pipeline: raw data -> validate -> augment -> tokenize -> pretrain (PyTorchJob or
TrainJob: the ``launch_api`` field of the run form, ``lmforge.kfp.form``)."""

from kfp import dsl

from lmforge.config import Config
from lmforge.kfp import form
from lmforge.kfp.dag import data_to_pretrained, form_args
from lmforge_pipelines.ops import Ops


def build(cfg: Config) -> dsl.graph_component.GraphComponent:
    """The pipeline with its parameters' defaults taken from ``cfg`` (``params.yaml``)."""
    ops = Ops.on_image(cfg.kubeflow.image)

    def pretrain(data_uri, backend, fields, overrides):
        data_to_pretrained(ops, cfg, data_uri, backend, form_args(cfg, fields, overrides))

    return form.form_pipeline(
        cfg,
        "pretrain",
        "Validate, augment and tokenize the raw data; pretrain the decoder LM.",
        form.inputs(cfg, "data_uri", "backend"),
        form.PRETRAIN_FIELDS,
        pretrain,
    )
