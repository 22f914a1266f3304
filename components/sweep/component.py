"""Plan a sweep's trials, run one trial (pretrain, inline in the task), pick the best one."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output
from kfp.dsl.python_component import PythonComponent

from lmforge.kfp.factory import DEFAULT_IMAGE, lmforge_component, on_image


@lmforge_component
def sweep_plan(params: str, overrides: list, run_id: str, task_name: str) -> list:
    """``lmforge.sweep.trials.plan``: the trials, ``[{"number": N, "params": {...}}, ...]``.

    Args:
        params: The params YAML of this run (``params.yaml`` at compile time).
        overrides: ``SECTION.KEY=VALUE`` overrides applied on top of ``params``.
        run_id: The KFP run id (tags the parent MLflow run).
        task_name: This task's name.
    """
    from lmforge.kfp.runtime import step_config
    from lmforge.sweep.trials import plan

    return plan(step_config(params, overrides, run_id, task_name))


@lmforge_component
def sweep_trial(
    tokenized: Input[Dataset],
    trial: dict,
    params: str,
    overrides: list,
    run_id: str,
    task_name: str,
    pretrained: Output[Model],
) -> dict:
    """``lmforge.sweep.trials.sweep_trial``: one trial's pretrain into ``pretrained``.

    Args:
        tokenized: Output of the tokenize component.
        trial: One item of the plan: its number and its ``SECTION.KEY`` values (JSON text).
        params: The params YAML of this run.
        overrides: ``SECTION.KEY=VALUE`` overrides applied on top of ``params``.
        run_id: The KFP run id (the trial's MLflow run nests under the run's parent).
        task_name: This task's name (tags the trial's MLflow run).
        pretrained: The trial's pretrain output (model, metrics.json, plots).

    Returns:
        The trial's row: number, params, state (COMPLETE or FAIL), objective, error.
    """
    from pathlib import Path

    from lmforge.kfp.runtime import step_config
    from lmforge.sweep.trials import sweep_trial as run_trial

    cfg = step_config(params, overrides, run_id, task_name)
    return run_trial(cfg, Path(tokenized.path), Path(pretrained.path), trial)


@lmforge_component
def sweep_best(
    results: list,
    params: str,
    overrides: list,
    run_id: str,
    task_name: str,
    best: Output[Artifact],
) -> dict:
    """``lmforge.sweep.trials.pick_best``: ``best.yaml`` (a params.yaml fragment), ``trials.csv``,
    ``plots/objective.png`` and ``summary.json`` in ``best``.

    Args:
        results: Every trial's row (``dsl.Collected`` over the trials).
        params: The params YAML of this run.
        overrides: ``SECTION.KEY=VALUE`` overrides applied on top of ``params``.
        run_id: The KFP run id.
        task_name: This task's name.
        best: The sweep's report folder.

    Returns:
        The summary: counts, the best trial, its objective and its params.
    """
    from pathlib import Path

    from lmforge.kfp.runtime import step_config
    from lmforge.sweep.trials import pick_best

    cfg = step_config(params, overrides, run_id, task_name)
    return pick_best(cfg, results, Path(best.path))


def build(image: str = DEFAULT_IMAGE) -> tuple[PythonComponent, PythonComponent, PythonComponent]:
    """``(sweep_plan, sweep_trial, sweep_best)`` on ``image`` (``kubeflow.image``)."""
    return on_image(sweep_plan, image), on_image(sweep_trial, image), on_image(sweep_best, image)
