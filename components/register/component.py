"""Register both models in MLflow as new versions with the alias ``challenger``."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output
from kfp.dsl.python_component import PythonComponent

from lmforge.kfp.factory import DEFAULT_IMAGE, lmforge_component, on_image


@lmforge_component
def register(
    pretrained: Input[Model],
    finetuned: Input[Model],
    evaluation: Input[Dataset],
    params: str,
    overrides: list,
    run_id: str,
    task_name: str,
    registered: Output[Artifact],
):
    """Run ``lmforge.registry.register``; the pipeline calls it only when the gate passed.

    Args:
        pretrained: Output of the pretrain component (the language model).
        finetuned: Output of the finetune component (the classifier).
        evaluation: Output of the evaluate component (metrics logged with the versions).
        params: The params YAML of this run (``params.yaml`` at compile time).
        overrides: ``SECTION.KEY=VALUE`` overrides applied on top of ``params``.
        run_id: The KFP run id (tags the parent MLflow run and the model versions).
        task_name: This task's name (tags the step's MLflow run).
        registered: ``registered.json``: model names, versions and run ids.
    """
    from pathlib import Path

    from lmforge.kfp.runtime import step_config
    from lmforge.registry import register as step

    cfg = step_config(params, overrides, run_id, task_name)
    step(
        cfg,
        Path(pretrained.path),
        Path(finetuned.path),
        Path(evaluation.path),
        Path(registered.path),
    )


def build(image: str = DEFAULT_IMAGE) -> PythonComponent:
    """The component on ``image`` (``kubeflow.image``)."""
    return on_image(register, image)
