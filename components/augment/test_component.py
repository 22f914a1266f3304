"""The augment component in the session's full local pipeline run on the micro data."""

from lmforge_components.testing import logged_metrics


def lines(path):
    return path.read_text().count("\n")


def test_augment_adds_training_records_only(upstream, full_pipeline_run):
    validated = upstream["validated"]  # the run's validate task's output, augment's input
    task = full_pipeline_run.task("augment")
    augmented = task / "augmented"
    assert lines(augmented / "corpus" / "train.jsonl") > lines(validated / "corpus" / "train.jsonl")
    for split in ("validation", "test"):
        same = (augmented / "labelled" / f"{split}.jsonl").read_text()
        assert same == (validated / "labelled" / f"{split}.jsonl").read_text()
    assert logged_metrics(task)
