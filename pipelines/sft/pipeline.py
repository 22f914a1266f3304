"""SFT pipeline: the finetune pipeline with ``finetune.task: sft`` as its default params.

From a pretrain pipeline's model: validate and augment the raw data again (the emails' subject
lines are the default pairs, personal data masked by validate), instruction-tune the decoder,
evaluate it against the untuned model on held-out pairs, and register it as a text-generation
model (``register.sft_model_name``) when the gate passes. The steps are the finetune pipeline's
components; the run form's ``finetune_task`` defaults to ``sft``, its gate field is
``sft_min_primary``, and ``finetune.sft_data`` and the other keys go in ``overrides`` per run.
``tokenized_uri`` is imported for the shared evaluate step's signature; SFT evaluation does not
read it.
"""

import copy

from kfp import dsl

from lmforge.config import Config
from lmforge.kfp.form import FINETUNE_FIELDS
from lmforge_pipelines.finetune import pipeline as finetune

# The SFT gate's threshold in place of the classifier's.
FIELDS = tuple("sft_min_primary" if f == "min_primary" else f for f in FINETUNE_FIELDS)


def build(cfg: Config) -> dsl.graph_component.GraphComponent:
    """The pipeline with its parameters' defaults taken from ``cfg``, the task set to sft."""
    tuned = copy.deepcopy(cfg)
    tuned.finetune.task = "sft"
    return finetune.build(
        tuned,
        name="sft",
        description="Instruction-tune the pretrained decoder on prompt/response pairs, evaluate "
        "it against the untuned model, register it as a text-generation model when it passes "
        "the gate.",
        fields=FIELDS,
    )
