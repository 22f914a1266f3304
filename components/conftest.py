"""Fixtures of the component tests: micro raw data, and each step's output from the session's
one local run of the full pipeline, so every component test starts from real upstream folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge_components.testing import build_micro_data


@pytest.fixture(scope="session")
def micro_data(tmp_path_factory) -> Path:
    return build_micro_data(tmp_path_factory.mktemp("micro") / "data")


@pytest.fixture(scope="session")
def upstream(full_pipeline_run) -> dict[str, Path]:
    """Step outputs of the session's full pipeline run (the root conftest's, micro config, gate
    at 0): validated, augmented, tokenized, pretrain, finetune, evaluate."""
    outputs = {
        "validated": ("validate", "validated"),
        "augmented": ("augment", "augmented"),
        "tokenized": ("tokenize", "tokenized"),
        "pretrain": ("pretrain", "pretrained"),
        "finetune": ("finetune", "finetuned"),
        "evaluate": ("evaluate", "evaluation"),
    }
    return {key: full_pipeline_run.task(task) / out for key, (task, out) in outputs.items()}


@pytest.fixture
def kfp_workdir(tmp_path, monkeypatch) -> Path:
    """Components run with the test's folder as cwd, so nothing lands in the repository."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "kfp"
