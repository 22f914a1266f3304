"""The evaluate component: its gate verdict (returned and in the report), the report as a Markdown
artifact, the metrics. Threshold 0 passes: the full pipeline run's evaluate task; a threshold
above any score refuses: the component alone, on that run's upstream outputs."""

import json
from pathlib import Path

from kfp.dsl import Dataset, Model

from lmforge_components.evaluate import build
from lmforge_components.testing import logged_metrics, micro_config, returned, run_one


def assert_gate_verdict(task: Path, passes: bool) -> None:
    assert returned(task) is passes
    report = json.loads((task / "evaluation" / "report.json").read_text())
    assert report["gate"]["passed"] is passes
    assert (task / "report").read_text() == (task / "evaluation" / "report.md").read_text()
    assert "macro_f1" in logged_metrics(task)


def test_evaluate_returns_the_gate_verdict_passed_at_threshold_0(full_pipeline_run):
    assert_gate_verdict(full_pipeline_run.task("evaluate"), passes=True)  # min_primary=0.0


def test_evaluate_returns_the_gate_verdict_refused_above_any_score(upstream, kfp_workdir):
    cfg = micro_config("register.min_primary=1.01", store=kfp_workdir)
    inputs = {
        "pretrained": (upstream["pretrain"], Model),
        "finetuned": (upstream["finetune"], Model),
        "tokenized": (upstream["tokenized"], Dataset),
        "augmented": (upstream["augmented"], Dataset),
    }
    assert_gate_verdict(run_one(build(), cfg, kfp_workdir, inputs), passes=False)
