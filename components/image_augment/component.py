"""Seeded image augmentation of the training split (crops, caption-safe flips, colour jitter),
provenance kept; validation and test pass through."""

from kfp.dsl import Dataset, Input, Metrics, Output
from kfp.dsl.python_component import PythonComponent

from lmforge.kfp.factory import DEFAULT_IMAGE, lmforge_component, on_image


@lmforge_component
def image_augment(
    validated: Input[Dataset],
    params: str,
    overrides: list,
    run_id: str,
    task_name: str,
    augmented: Output[Dataset],
    metrics: Output[Metrics],
):
    """Run ``lmforge.data.images.steps.image_augment`` on the validated image splits.

    Args:
        validated: Output of the image_validate component.
        params: The params YAML of this run (``params.yaml`` at compile time).
        overrides: ``SECTION.KEY=VALUE`` overrides applied on top of ``params``.
        run_id: The KFP run id (tags the parent MLflow run).
        task_name: This task's name (tags the step's MLflow run).
        augmented: The same layout as ``validated``, training split augmented.
        metrics: Copies made, flipped, flips refused for the caption's sake.
    """
    from pathlib import Path

    from lmforge.data.images.steps import image_augment as step
    from lmforge.kfp.runtime import log_metrics, step_config

    cfg = step_config(params, overrides, run_id, task_name)
    step(cfg, Path(validated.path), Path(augmented.path))
    log_metrics(metrics, Path(augmented.path))


def build(image: str = DEFAULT_IMAGE) -> PythonComponent:
    """The component on ``image`` (``kubeflow.image``)."""
    return on_image(image_augment, image)
