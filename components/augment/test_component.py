"""The augment component through KFP's local runner on a validated micro split."""

from kfp.dsl import Dataset

from lmforge_components.augment import build
from lmforge_components.testing import logged_metrics, micro_config, run_one


def lines(path):
    return path.read_text().count("\n")


def test_augment_adds_training_records_only(upstream, kfp_workdir):
    cfg = micro_config(store=kfp_workdir)
    validated = upstream["validated"]
    task = run_one(build(), cfg, kfp_workdir, {"validated": (validated, Dataset)})
    augmented = task / "augmented"
    assert lines(augmented / "corpus" / "train.jsonl") > lines(validated / "corpus" / "train.jsonl")
    for split in ("validation", "test"):
        same = (augmented / "labelled" / f"{split}.jsonl").read_text()
        assert same == (validated / "labelled" / f"{split}.jsonl").read_text()
    assert logged_metrics(task)
