"""Plan a sweep's trials, run one trial (pretrain, inline in the task), pick the best one; with
``ladder``, the same for the scaling study's rungs and the fit of L(N, D)."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output
from kfp.dsl.python_component import PythonComponent

from lmforge.kfp.factory import DEFAULT_IMAGE, lmforge_component, on_image


@lmforge_component
def sweep_plan(
    tokenized: Input[Dataset],
    params: str,
    overrides: list,
    ladder: bool,
    run_id: str,
    task_name: str,
) -> list:
    """``lmforge.sweep.trials.plan``: the trials, ``[{"number": N, "params": {...}}, ...]``.

    Args:
        tokenized: Output of the tokenize component (the ladder's rungs are planned on it).
        params: The params YAML of this run (``params.yaml`` at compile time).
        overrides: ``SECTION.KEY=VALUE`` overrides applied on top of ``params``.
        ladder: Plan the scaling study's rungs (sizes x token budgets) instead of sweep points.
        run_id: The KFP run id (tags the parent MLflow run).
        task_name: This task's name.
    """
    from pathlib import Path

    from lmforge.kfp.runtime import step_config
    from lmforge.sweep.trials import plan

    cfg = step_config(params, overrides, run_id, task_name)
    return plan(cfg, Path(tokenized.path), ladder)


@lmforge_component
def sweep_trial(
    tokenized: Input[Dataset],
    trial: dict,
    params: str,
    overrides: list,
    ladder: bool,
    run_id: str,
    task_name: str,
    pretrained: Output[Model],
) -> dict:
    """``lmforge.sweep.trials.sweep_trial``: one trial's (or rung's) pretrain into ``pretrained``.

    Args:
        tokenized: Output of the tokenize component.
        trial: One item of the plan: its number and its ``SECTION.KEY`` values (JSON text).
        params: The params YAML of this run.
        overrides: ``SECTION.KEY=VALUE`` overrides applied on top of ``params``.
        ladder: The item is a scaling rung (its pretrain output under ``rungs/rung-NN``).
        run_id: The KFP run id (the trial's MLflow run nests under the run's parent).
        task_name: This task's name (tags the trial's MLflow run).
        pretrained: The trial's pretrain output (model, metrics.json, plots).

    Returns:
        The trial's row: number, params, state (COMPLETE or FAIL), objective, error (a rung's:
        number, rung, state, val_loss, tokens_seen, error).
    """
    from pathlib import Path

    from lmforge.kfp.runtime import step_config
    from lmforge.sweep.trials import sweep_trial as run_trial

    cfg = step_config(params, overrides, run_id, task_name)
    return run_trial(cfg, Path(tokenized.path), Path(pretrained.path), trial, ladder)


@lmforge_component
def sweep_best(
    results: list,
    params: str,
    overrides: list,
    ladder: bool,
    run_id: str,
    task_name: str,
    best: Output[Artifact],
) -> dict:
    """``lmforge.sweep.trials.pick_best``: ``best.yaml`` (a params.yaml fragment), ``trials.csv``,
    ``plots/objective.png`` and ``summary.json`` in ``best``; with ``ladder``, the scaling
    study's fit: ``rungs.csv``, ``report.json``, ``report.md``, ``plots/``.

    Args:
        results: Every trial's row (``dsl.Collected`` over the trials).
        params: The params YAML of this run.
        overrides: ``SECTION.KEY=VALUE`` overrides applied on top of ``params``.
        ladder: Fit the scaling law to the rungs' rows instead of picking a best trial.
        run_id: The KFP run id.
        task_name: This task's name.
        best: The sweep's report folder.

    Returns:
        The summary: counts, the best trial, its objective and its params (a ladder's: the
        fitted law, the compute-optimal N and D, the trust section).
    """
    from pathlib import Path

    from lmforge.kfp.runtime import step_config
    from lmforge.sweep.trials import pick_best

    cfg = step_config(params, overrides, run_id, task_name)
    return pick_best(cfg, results, Path(best.path), ladder)


def build(image: str = DEFAULT_IMAGE) -> tuple[PythonComponent, PythonComponent, PythonComponent]:
    """``(sweep_plan, sweep_trial, sweep_best)`` on ``image`` (``kubeflow.image``)."""
    return on_image(sweep_plan, image), on_image(sweep_trial, image), on_image(sweep_best, image)
