"""The validate component through KFP's local runner on micro raw data."""

from kfp.dsl import Dataset

from lmforge_components.testing import logged_metrics, micro_config, run_one
from lmforge_components.validate import build


def test_validate_splits_the_data_and_publishes_report_and_metrics(full_pipeline_run):
    task = full_pipeline_run.task("validate")  # the micro data, run in the full pipeline
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


def test_validate_reads_plain_text_files_set_in_params(micro_data, kfp_workdir, tmp_path):
    """Your own corpus through the component: a folder of .txt files, chosen in params alone
    (the component's signature is the same for every input kind)."""
    import json
    import shutil

    raw = tmp_path / "txt-data"
    (raw / "corpus").mkdir(parents=True)
    texts = [
        json.loads(line)["text"]
        for path in sorted(micro_data.glob("corpus/*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    for i, text in enumerate(texts):
        (raw / "corpus" / f"doc{i:03d}.txt").write_text(text + "\n")
    shutil.copytree(micro_data / "labelled", raw / "labelled")
    cfg = micro_config("data.corpus_glob=corpus/*.txt", store=kfp_workdir)
    task = run_one(build(cfg.kubeflow.image), cfg, kfp_workdir, {"raw_data": (raw, Dataset)})
    written = [
        json.loads(line)
        for split in ("train", "validation", "test")
        for line in (task / "validated" / "corpus" / f"{split}.jsonl").read_text().splitlines()
    ]
    assert sorted(r["text"] for r in written) == sorted(texts)
    assert {r["source"] for r in written} == {f"doc{i:03d}" for i in range(len(texts))}
    assert logged_metrics(task)["corpus.records"] == len(texts)
