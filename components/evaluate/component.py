"""Evaluate: perplexity, accuracy, macro-F1, samples; the gate that decides registration."""

from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output
from kfp.dsl.python_component import PythonComponent

from lmforge.kfp.factory import DEFAULT_IMAGE, lmforge_component, on_image


@lmforge_component
def evaluate(
    pretrained: Input[Model],
    finetuned: Input[Model],
    tokenized: Input[Dataset],
    augmented: Input[Dataset],
    params: str,
    overrides: list,
    run_id: str,
    task_name: str,
    evaluation: Output[Dataset],
    report: Output[Markdown],
    metrics: Output[Metrics],
) -> bool:
    """Run ``lmforge.evaluate.evaluate``; return whether the evaluation gate passed.

    The return value is the pipeline's ``Output`` parameter that ``dsl.If`` tests before the
    register step (a single return value: KFP's local runner resolves conditions on it).

    Args:
        pretrained: Output of the pretrain component.
        finetuned: Output of the finetune component.
        tokenized: Output of the tokenize component (test blocks for perplexity).
        augmented: Output of the augment component (labelled test split).
        params: The params YAML of this run (``params.yaml`` at compile time).
        overrides: ``SECTION.KEY=VALUE`` overrides applied on top of ``params``.
        run_id: The KFP run id (tags the parent MLflow run).
        task_name: This task's name (tags the step's MLflow run).
        evaluation: ``report.json``, ``report.md``, ``samples.json``, confusion plots.
        report: The Markdown report, rendered in the KFP UI.
        metrics: Perplexity, accuracy, macro-F1 (and the baseline's, the champion's).
    """
    from pathlib import Path

    from lmforge.evaluate import evaluate as step
    from lmforge.kfp.runtime import log_metrics, publish, step_config

    cfg = step_config(params, overrides, run_id, task_name)
    out = Path(evaluation.path)
    result = step(
        cfg,
        Path(pretrained.path),
        Path(finetuned.path),
        Path(tokenized.path),
        Path(augmented.path),
        out,
    )
    publish(out / "report.md", report)
    log_metrics(metrics, out)
    return bool(result.passed)


def build(image: str = DEFAULT_IMAGE) -> PythonComponent:
    """The component on ``image`` (``kubeflow.image``)."""
    return on_image(evaluate, image)
