"""``lmforge pipeline compile``: every pipeline of this package to KFP v2 YAML.

Each pipeline is compiled with its parameter defaults taken from the config (``params.yaml``),
into ``<out_dir>/<name>/pipeline.yaml``; ``out_dir`` defaults to ``pipelines`` in the working
directory, which in a checkout is where the committed files sit (``tests/test_kfp_compile.py``
fails when one differs from what this writes, so the YAML in the repository is never stale).
The pipelines are imported by package name (``pipelines/`` is installed as
``lmforge_pipelines``), so this works the same from a wheel as from the checkout. It lives here,
above the pipelines it compiles, so the library (``lmforge.kfp``) never imports them.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path

from lmforge.config import Config
from lmforge_pipelines import NAMES as PIPELINES

PIPELINES_DIR = Path("pipelines")  # relative: the working directory's (the checkout's) folder


def build_pipeline(cfg: Config, name: str):
    """The ``@dsl.pipeline`` function of pipeline ``name`` built on ``cfg``."""
    if name not in PIPELINES:
        from lmforge.errors import PipelineError

        raise PipelineError(f"pipeline {name!r}: unknown; choose one of {', '.join(PIPELINES)}")
    return importlib.import_module(f"lmforge_pipelines.{name}.pipeline").build(cfg)


def compile_pipeline(cfg: Config, name: str, path: Path) -> Path:
    """Compile one pipeline to ``path``, written atomically (temp file, then rename)."""
    from kfp import compiler

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".pipeline-", suffix=".yaml", dir=path.parent)
    os.close(fd)
    try:
        compiler.Compiler().compile(build_pipeline(cfg, name), package_path=tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def compile_all(cfg: Config, out_dir: Path = PIPELINES_DIR) -> dict[str, str]:
    """Compile every pipeline into ``out_dir/<name>/pipeline.yaml``; returns name -> path."""
    return {
        name: str(compile_pipeline(cfg, name, Path(out_dir) / name / "pipeline.yaml"))
        for name in PIPELINES
    }
