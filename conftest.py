"""Fixtures that tests/ and components/ share (each folder has its own conftest besides)."""

from __future__ import annotations

import pytest

from lmforge_components.testing import FullRun, run_full_pipeline


@pytest.fixture(scope="session")
def full_pipeline_run(tmp_path_factory) -> FullRun:
    """The full pipeline once, from the console script on micro data (see ``FullRun``):
    tests/test_pipeline_local.py asserts the run, each component's test its own task's outputs,
    and ``upstream`` hands its step outputs to the component tests that need inputs."""
    return run_full_pipeline(tmp_path_factory.mktemp("full-pipeline"))
