"""A registry with both tiny models registered and promoted once per session, for the serve tests.

``registered_db`` registers ``trained_stages``' LM and classifier into a sqlite store of its own
and promotes each (champion = version 1); ``registry`` gives a test a private copy of that
database (the artifacts are shared, read-only) and a Config pointing at it, so a test may move
aliases without touching the others.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow_fixtures import _store_env, tiny_config

__all__ = ["add_version", "registered_db", "registry"]


@pytest.fixture(scope="session")
def registered_db(trained_stages, tmp_path_factory, blank_store_db) -> tuple[Path, Path]:
    from lmforge.registry import promote, register

    root = tmp_path_factory.mktemp("registered")
    shutil.copyfile(blank_store_db, root / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        _store_env(mp, f"sqlite:///{root / 'mlflow.db'}")
        cfg = tiny_config(f"tracking.artifact_location={root / 'mlartifacts'}")
        stages = trained_stages
        register(cfg, stages["pretrain"], stages["finetune"], stages["evaluate"], root / "reg")
        for name in (cfg.register.lm_model_name, cfg.register.classifier_model_name):
            promote(cfg, name)
    return root / "mlflow.db", root / "mlartifacts"


@pytest.fixture
def registry(registered_db, tmp_path, monkeypatch):
    """A Config on a private copy of the registered store (champion = version 1 of both)."""
    db, artifacts = registered_db
    shutil.copyfile(db, tmp_path / "mlflow.db")
    _store_env(monkeypatch, f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tiny_config(f"tracking.artifact_location={artifacts}")


def add_version(cfg, name: str, metrics: dict[str, float]) -> str:
    """A new version on version 1's files with other numbers, aliased ``challenger``."""
    from lmforge import tracking
    from lmforge.registry import METRIC_TAG

    client = tracking.client(cfg)
    first = client.get_model_version(name, "1")
    tags = {**first.tags, **{METRIC_TAG + k: repr(v) for k, v in metrics.items()}}
    mv = client.create_model_version(name, first.source, run_id=first.run_id, tags=tags)
    client.set_registered_model_alias(name, cfg.register.challenger_alias, mv.version)
    return str(mv.version)
