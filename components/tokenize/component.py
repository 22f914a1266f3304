"""Train the byte-level BPE tokenizer on the training split and pack every split into blocks."""

from kfp.dsl import Dataset, Input, Metrics, Output
from kfp.dsl.python_component import PythonComponent

from lmforge.kfp.factory import DEFAULT_IMAGE, lmforge_component, on_image


@lmforge_component
def tokenize(
    augmented: Input[Dataset],
    params: str,
    overrides: list,
    run_id: str,
    task_name: str,
    tokenized: Output[Dataset],
    metrics: Output[Metrics],
):
    """Run ``lmforge.data.tokenize.tokenize`` on the augmented corpus.

    Args:
        augmented: Output of the augment component.
        params: The params YAML of this run (``params.yaml`` at compile time).
        overrides: ``SECTION.KEY=VALUE`` overrides applied on top of ``params``.
        run_id: The KFP run id (tags the parent MLflow run).
        task_name: This task's name (tags the step's MLflow run).
        tokenized: ``tokenizer/`` and memory-mapped ``blocks/{train,validation,test}.bin``.
        metrics: Vocabulary size, tokens and blocks per split.
    """
    from pathlib import Path

    from lmforge.data.tokenize import tokenize as step
    from lmforge.kfp.runtime import log_metrics, step_config

    cfg = step_config(params, overrides, run_id, task_name)
    step(cfg, Path(augmented.path), Path(tokenized.path))
    log_metrics(metrics, Path(tokenized.path))


def build(image: str = DEFAULT_IMAGE) -> PythonComponent:
    """The component on ``image`` (``kubeflow.image``)."""
    return on_image(tokenize, image)
