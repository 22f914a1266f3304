"""The finetune component in the session's full local pipeline run from a micro pretrained model."""

from lmforge_components.testing import logged_metrics


def test_finetune_writes_classifier_and_baseline(full_pipeline_run):
    task = full_pipeline_run.task("finetune")
    finetuned = task / "finetuned"
    assert (finetuned / "model" / "config.json").exists()
    assert (finetuned / "baseline").is_dir()
    assert logged_metrics(task)
