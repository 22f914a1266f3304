"""Stage 2 of the image-text model: instruction tuning on pairs made from the captions."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output
from kfp.dsl.python_component import PythonComponent

from lmforge.kfp.factory import DEFAULT_IMAGE, lmforge_component, on_image


@lmforge_component
def multimodal_instruct(
    aligned: Input[Model],
    images: Input[Dataset],
    params: str,
    overrides: list,
    run_id: str,
    task_name: str,
    instructed: Output[Model],
    metrics: Output[Metrics],
):
    """Run ``lmforge.multimodal.train.instruct``.

    Args:
        aligned: Output of the multimodal_align component.
        images: Image-text splits (``train/``, ``val/``, ``test/``).
        params: The params YAML of this run (``params.yaml`` at compile time).
        overrides: ``SECTION.KEY=VALUE`` overrides applied on top of ``params``.
        run_id: The KFP run id (tags the parent MLflow run).
        task_name: This task's name (tags the step's MLflow run).
        instructed: ``model/`` (merged when LoRA) and ``pairs/`` (the pairs trained on).
        metrics: Validation answer loss and perplexity, parameter counts.
    """
    from pathlib import Path

    from lmforge.kfp.runtime import log_metrics, step_config
    from lmforge.multimodal.train import instruct

    cfg = step_config(params, overrides, run_id, task_name)
    instruct(cfg, Path(aligned.path), Path(images.path), Path(instructed.path))
    log_metrics(metrics, Path(instructed.path))


def build(image: str = DEFAULT_IMAGE) -> PythonComponent:
    """The component on ``image`` (``kubeflow.image``)."""
    return on_image(multimodal_instruct, image)
