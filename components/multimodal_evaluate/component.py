"""Evaluate the image-text model against the text-only baseline and chance."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output
from kfp.dsl.python_component import PythonComponent

from lmforge.kfp.factory import DEFAULT_IMAGE, lmforge_component, on_image


@lmforge_component
def multimodal_evaluate(
    instructed: Input[Model],
    images: Input[Dataset],
    params: str,
    overrides: list,
    run_id: str,
    task_name: str,
    evaluation: Output[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
) -> bool:
    """Run ``lmforge.multimodal.evaluate.evaluate_multimodal`` on ``images/test``.

    Args:
        instructed: Output of the multimodal_instruct component (``model/``).
        images: Image-text splits; the ``test/`` split is scored.
        params: The params YAML of this run (``params.yaml`` at compile time).
        overrides: ``SECTION.KEY=VALUE`` overrides applied on top of ``params``.
        run_id: The KFP run id (tags the parent MLflow run).
        task_name: This task's name (tags the step's MLflow run).
        evaluation: ``report.json``, ``captions.jsonl``, ``report.html``.
        report: The HTML report (thumbnails beside generated and reference captions).
        metrics: The model's, the text-only baseline's and chance's numbers.

    Returns:
        Whether the gate passed (recall@1 above the text-only baseline's by the margin).
    """
    from pathlib import Path

    from lmforge.kfp.runtime import publish, step_config
    from lmforge.multimodal.evaluate import evaluate_multimodal
    from lmforge.tracking import flat_metrics

    cfg = step_config(params, overrides, run_id, task_name)
    out = Path(evaluation.path)
    result = evaluate_multimodal(
        cfg, Path(instructed.path) / "model", Path(images.path) / "test", out
    )
    for name, value in sorted(
        flat_metrics({k: result[k] for k in ("model", "text_only", "chance")}).items()
    ):
        metrics.log_metric(name, value)
    publish(out / "report.html", report)
    return bool(result["gate"]["passed"])


def build(image: str = DEFAULT_IMAGE) -> PythonComponent:
    """The component on ``image`` (``kubeflow.image``)."""
    return on_image(multimodal_evaluate, image)
