"""Fixtures of the component tests: micro raw data and a private MLflow store per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.testing import build_micro_data


@pytest.fixture(scope="session")
def micro_data(tmp_path_factory) -> Path:
    return build_micro_data(tmp_path_factory.mktemp("micro") / "data")


@pytest.fixture
def kfp_workdir(tmp_path, monkeypatch) -> Path:
    """Components run with the test's folder as cwd, so nothing lands in the repository."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "kfp"
