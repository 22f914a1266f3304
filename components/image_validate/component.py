"""Validate captioned images (``multimodal.data``): refuse what would break training, strip
every image's metadata, mask the captions, resize, and split by a hash of the image."""

from kfp.dsl import Dataset, Input, Metrics, Output
from kfp.dsl.python_component import PythonComponent

from lmforge.kfp.factory import DEFAULT_IMAGE, lmforge_component, on_image


@lmforge_component
def image_validate(
    raw_data: Input[Dataset],
    params: str,
    overrides: list,
    run_id: str,
    task_name: str,
    validated: Output[Dataset],
    metrics: Output[Metrics],
):
    """Run ``lmforge.data.images.steps.image_validate`` on the raw data folder.

    Args:
        raw_data: The DVC-tracked ``data/`` folder (``multimodal.data.captions_file`` under it).
        params: The params YAML of this run (``params.yaml`` at compile time).
        overrides: ``SECTION.KEY=VALUE`` overrides applied on top of ``params``.
        run_id: The KFP run id (tags the parent MLflow run).
        task_name: This task's name (tags the step's MLflow run).
        validated: ``train/``, ``val/``, ``test/`` (pairs.jsonl + images/<id>.png) and
            report.json.
        metrics: Pairs per split, duplicates removed, metadata stripped, personal data found.
    """
    from pathlib import Path

    from lmforge.data.images.steps import image_validate as step
    from lmforge.kfp.runtime import log_metrics, step_config

    cfg = step_config(params, overrides, run_id, task_name)
    step(cfg, Path(raw_data.path), Path(validated.path))
    log_metrics(metrics, Path(validated.path))


def build(image: str = DEFAULT_IMAGE) -> PythonComponent:
    """The component on ``image`` (``kubeflow.image``)."""
    return on_image(image_validate, image)
