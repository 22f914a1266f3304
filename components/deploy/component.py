"""Promote the challengers, then create or patch the champions' KServe InferenceServices."""

from kfp.dsl import Artifact, Input, Output
from kfp.dsl.python_component import PythonComponent

from lmforge.kfp.factory import DEFAULT_IMAGE, lmforge_component, on_image


@lmforge_component
def deploy(
    registered: Input[Artifact],
    params: str,
    overrides: list,
    run_id: str,
    task_name: str,
    deployed: Output[Artifact],
):
    """Run ``lmforge.serve.deploy.promote_and_deploy``; only with ``kubeflow.deploy: true``.

    Args:
        registered: Output of the register component: the models to promote and deploy.
        params: The params YAML of this run (``params.yaml`` at compile time).
        overrides: ``SECTION.KEY=VALUE`` overrides applied on top of ``params``.
        run_id: The KFP run id.
        task_name: This task's name.
        deployed: ``inferenceservices.yaml`` and ``deployed.json`` (names, versions, URLs).
    """
    from pathlib import Path

    from lmforge.kfp.runtime import step_config
    from lmforge.serve.deploy import promote_and_deploy

    cfg = step_config(params, overrides, run_id, task_name)
    # which models register made challengers of; their versions come from the registry's aliases
    promote_and_deploy(cfg, Path(deployed.path), Path(registered.path))


def build(image: str = DEFAULT_IMAGE) -> PythonComponent:
    """The component on ``image`` (``kubeflow.image``)."""
    return on_image(deploy, image)
