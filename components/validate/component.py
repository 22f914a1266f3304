"""Validate the raw data with Great Expectations, mask personal data (``data.pii``), then split
it by a hash of the record id."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Output
from kfp.dsl.python_component import PythonComponent

from lmforge.kfp.factory import DEFAULT_IMAGE, lmforge_component, on_image


@lmforge_component
def validate(
    raw_data: Input[Dataset],
    params: str,
    overrides: list,
    run_id: str,
    task_name: str,
    validated: Output[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """Run ``lmforge.data.validate.validate`` on the raw data folder.

    Personal data is handled as ``data.pii`` (and ``data.pii_allow``) in ``params`` say: masked
    with typed placeholders by default, before the split and before any output is written.

    Args:
        raw_data: The DVC-tracked ``data/`` folder (corpus/*.jsonl, labelled/*.jsonl).
        params: The params YAML of this run (``params.yaml`` at compile time).
        overrides: ``SECTION.KEY=VALUE`` overrides applied on top of ``params``.
        run_id: The KFP run id (tags the parent MLflow run).
        task_name: This task's name (tags the step's MLflow run).
        validated: Split data: ``corpus/`` and ``labelled/`` train/validation/test jsonl.
        report: The Great Expectations report (with the personal data found per type and
            split), rendered in the KFP UI.
        metrics: The validation metrics (records, failures, split sizes, ``pii.*`` counts).
    """
    from pathlib import Path

    from lmforge.data.validate import validate as step
    from lmforge.kfp.runtime import log_metrics, publish, step_config

    cfg = step_config(params, overrides, run_id, task_name)
    step(cfg, Path(raw_data.path), Path(validated.path))
    publish(Path(validated.path) / "report.html", report)
    log_metrics(metrics, Path(validated.path))


def build(image: str = DEFAULT_IMAGE) -> PythonComponent:
    """The component on ``image`` (``kubeflow.image``)."""
    return on_image(validate, image)
