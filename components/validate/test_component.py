"""The validate component through KFP's local runner on micro raw data."""

from kfp.dsl import Dataset

from lmforge_components.testing import logged_metrics, micro_config, run_one
from lmforge_components.validate import build


def test_validate_splits_the_data_and_publishes_report_and_metrics(micro_data, kfp_workdir):
    cfg = micro_config(store=kfp_workdir)
    task = run_one(build(cfg.kubeflow.image), cfg, kfp_workdir, {"raw_data": (micro_data, Dataset)})
    validated = task / "validated"
    for split in ("train", "validation", "test"):
        assert (validated / "corpus" / f"{split}.jsonl").stat().st_size > 0
        assert (validated / "labelled" / f"{split}.jsonl").stat().st_size > 0
    assert (task / "report").read_text() == (validated / "report.html").read_text()
    assert "<html" in (task / "report").read_text().lower()
    logged = logged_metrics(task)
    assert logged and all(isinstance(v, (int, float)) for v in logged.values())
    # The setting travels in ``params``: personal data found and masked, counted per split.
    assert logged["pii.total.email"] > 0 and logged["pii.datasets.labelled.train.email"] > 0
    assert "<|email|>" in (validated / "labelled" / "train.jsonl").read_text()
