"""The evaluate component through KFP's local runner: report, metrics and the gate it returns."""

import json

import pytest
from kfp.dsl import Dataset, Model

from lmforge_components.evaluate import build
from lmforge_components.testing import logged_metrics, micro_config, returned, run_one


@pytest.mark.parametrize(("threshold", "passes"), [(0.0, True), (1.01, False)])
def test_evaluate_returns_the_gate_verdict(upstream, kfp_workdir, threshold, passes):
    cfg = micro_config(f"register.min_primary={threshold}", store=kfp_workdir)
    inputs = {
        "pretrained": (upstream["pretrain"], Model),
        "finetuned": (upstream["finetune"], Model),
        "tokenized": (upstream["tokenized"], Dataset),
        "augmented": (upstream["augmented"], Dataset),
    }
    task = run_one(build(), cfg, kfp_workdir, inputs)
    assert returned(task) is passes
    report = json.loads((task / "evaluation" / "report.json").read_text())
    assert report["gate"]["passed"] is passes
    assert (task / "report").read_text() == (task / "evaluation" / "report.md").read_text()
    assert "macro_f1" in logged_metrics(task)
