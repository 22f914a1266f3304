"""Fine-tune a classifier from the pretrained decoder (full or LoRA), plus a scratch baseline."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output
from kfp.dsl.python_component import PythonComponent

from lmforge.kfp.factory import DEFAULT_IMAGE, lmforge_component, on_image


@lmforge_component
def finetune(
    pretrained: Input[Model],
    augmented: Input[Dataset],
    params: str,
    overrides: list,
    run_id: str,
    task_name: str,
    finetuned: Output[Model],
    metrics: Output[Metrics],
):
    """Run ``lmforge.train.finetune.finetune`` on the labelled splits.

    Args:
        pretrained: Output of the pretrain component (``model/``); unused with base_model set.
        augmented: Output of the augment component (``labelled/`` splits).
        params: The params YAML of this run (``params.yaml`` at compile time).
        overrides: ``SECTION.KEY=VALUE`` overrides applied on top of ``params``.
        run_id: The KFP run id (tags the parent MLflow run).
        task_name: This task's name (tags the step's MLflow run).
        finetuned: ``model/`` (HF sequence classifier), ``baseline/``, loss curve.
        metrics: Validation accuracy and loss of the classifier and the baseline.
    """
    from pathlib import Path

    from lmforge.kfp.runtime import log_metrics, step_config
    from lmforge.train.finetune import finetune as step

    cfg = step_config(params, overrides, run_id, task_name)
    step(cfg, Path(pretrained.path), Path(augmented.path), Path(finetuned.path))
    log_metrics(metrics, Path(finetuned.path))


def build(image: str = DEFAULT_IMAGE) -> PythonComponent:
    """The component on ``image`` (``kubeflow.image``)."""
    return on_image(finetune, image)
