"""Augment the training split (seeded, provenance kept), then validate it again."""

from kfp.dsl import Dataset, Input, Metrics, Output
from kfp.dsl.python_component import PythonComponent

from lmforge.kfp.factory import DEFAULT_IMAGE, lmforge_component, on_image


@lmforge_component
def augment(
    validated: Input[Dataset],
    params: str,
    overrides: list,
    run_id: str,
    task_name: str,
    augmented: Output[Dataset],
    metrics: Output[Metrics],
):
    """Run ``lmforge.data.augment.augment`` on the validated split.

    Args:
        validated: Output of the validate component.
        params: The params YAML of this run (``params.yaml`` at compile time).
        overrides: ``SECTION.KEY=VALUE`` overrides applied on top of ``params``.
        run_id: The KFP run id (tags the parent MLflow run).
        task_name: This task's name (tags the step's MLflow run).
        augmented: The same layout as ``validated``, training split augmented.
        metrics: Augmentation counts per operation.
    """
    from pathlib import Path

    from lmforge.data.augment import augment as step
    from lmforge.kfp.runtime import log_metrics, step_config

    cfg = step_config(params, overrides, run_id, task_name)
    step(cfg, Path(validated.path), Path(augmented.path))
    log_metrics(metrics, Path(augmented.path))


def build(image: str = DEFAULT_IMAGE) -> PythonComponent:
    """The component on ``image`` (``kubeflow.image``)."""
    return on_image(augment, image)
