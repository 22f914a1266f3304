"""Stage 1 of the image-text model: the vision encoder and projector learn to caption."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output
from kfp.dsl.python_component import PythonComponent

from lmforge.kfp.factory import DEFAULT_IMAGE, lmforge_component, on_image


@lmforge_component
def multimodal_align(
    pretrained: Input[Model],
    images: Input[Dataset],
    params: str,
    overrides: list,
    run_id: str,
    task_name: str,
    aligned: Output[Model],
    metrics: Output[Metrics],
):
    """Run ``lmforge.multimodal.train.align``.

    Args:
        pretrained: Output of the pretrain component (``model/``: the decoder); unused with
            multimodal.decoder or multimodal.base_model set.
        images: Image-text splits (``train/``, ``val/``, ``test/``) of image-validate/augment.
        params: The params YAML of this run (``params.yaml`` at compile time).
        overrides: ``SECTION.KEY=VALUE`` overrides applied on top of ``params``.
        run_id: The KFP run id (tags the parent MLflow run).
        task_name: This task's name (tags the step's MLflow run).
        aligned: ``model/`` (an image-text-to-text model folder with its processor).
        metrics: Validation caption loss and perplexity, parameter counts.
    """
    from pathlib import Path

    from lmforge.kfp.runtime import log_metrics, step_config
    from lmforge.multimodal.train import align

    cfg = step_config(params, overrides, run_id, task_name)
    align(cfg, Path(pretrained.path), Path(images.path), Path(aligned.path))
    log_metrics(metrics, Path(aligned.path))


def build(image: str = DEFAULT_IMAGE) -> PythonComponent:
    """The component on ``image`` (``kubeflow.image``)."""
    return on_image(multimodal_align, image)
