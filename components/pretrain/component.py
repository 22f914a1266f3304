"""Pretrain the decoder LM as a Kubeflow PyTorchJob or TrainJob (or the local runner of it)."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output
from kfp.dsl.python_component import PythonComponent

from lmforge.kfp.factory import DEFAULT_IMAGE, lmforge_component, on_image


@lmforge_component
def pretrain(
    tokenized: Input[Dataset],
    params: str,
    overrides: list,
    run_id: str,
    task_name: str,
    backend: str,
    pretrained: Output[Model],
    metrics: Output[Metrics],
    launch_api: str = "",
):
    """Run ``lmforge.launch.launcher.launch_pretrain`` and hand the trained model on.

    On ``backend="kubernetes"`` the tokenized data is staged onto the shared volume, the
    training job (a TrainJob, or a PyTorchJob: ``launch_api``) is created and watched until it
    ends, and its output is copied into
    ``pretrained``; on ``backend="local"`` the same job spec runs as local processes.

    Args:
        tokenized: Output of the tokenize component.
        params: The params YAML of this run (``params.yaml`` at compile time).
        overrides: ``SECTION.KEY=VALUE`` overrides applied on top of ``params``.
        run_id: The KFP run id (tags the parent MLflow run; names the staging folder).
        task_name: This task's name (tags the step's MLflow run).
        backend: ``kubernetes`` (the job on the cluster) or ``local``.
        launch_api: ``pytorchjob`` or ``trainjob`` (Trainer v2); empty: as in ``params``.
        pretrained: ``model/`` (HF causal LM with its tokenizer), checkpoints, loss curve.
        metrics: Final train and validation loss, perplexity, tokens per second.
    """
    from pathlib import Path

    from lmforge.kfp.runtime import log_metrics, pretrain_on_backend, step_config

    if launch_api:
        overrides = [*overrides, f"launch.api={launch_api}"]
    cfg = step_config(params, overrides, run_id, task_name)
    pretrain_on_backend(cfg, Path(tokenized.path), Path(pretrained.path), backend, run_id)
    log_metrics(metrics, Path(pretrained.path))


def build(image: str = DEFAULT_IMAGE) -> PythonComponent:
    """The component on ``image`` (``kubeflow.image``)."""
    return on_image(pretrain, image)
