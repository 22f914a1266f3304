"""Fixtures of the component tests: micro raw data, and each step's output made once by calling
the step functions directly, so every component test starts from real upstream folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge_components.testing import build_micro_data, micro_config


@pytest.fixture(scope="session")
def micro_data(tmp_path_factory) -> Path:
    return build_micro_data(tmp_path_factory.mktemp("micro") / "data")


@pytest.fixture(scope="session")
def upstream(tmp_path_factory, micro_data) -> dict[str, Path]:
    """Step outputs: validated, augmented, tokenized, pretrain, finetune, evaluate."""
    from lmforge.data.augment import augment
    from lmforge.data.tokenize import tokenize
    from lmforge.data.validate import validate
    from lmforge.evaluate import evaluate
    from lmforge.train.finetune import finetune
    from lmforge.train.pretrain import pretrain

    root = tmp_path_factory.mktemp("upstream")
    cfg = micro_config("register.min_primary=0.0", store=root)
    d = {k: root / k for k in ("validated", "augmented", "tokenized", "pretrain", "finetune")}
    validate(cfg, micro_data, d["validated"])
    augment(cfg, d["validated"], d["augmented"])
    tokenize(cfg, d["augmented"], d["tokenized"])
    pretrain(cfg, d["tokenized"], d["pretrain"])
    finetune(cfg, d["pretrain"], d["augmented"], d["finetune"])
    d["evaluate"] = root / "evaluate"
    evaluate(cfg, d["pretrain"], d["finetune"], d["tokenized"], d["augmented"], d["evaluate"])
    return d


@pytest.fixture
def kfp_workdir(tmp_path, monkeypatch) -> Path:
    """Components run with the test's folder as cwd, so nothing lands in the repository."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "kfp"
