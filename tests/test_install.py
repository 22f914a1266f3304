"""The distribution installed as a wheel (not editable) works without the repository.

The project is built from a copy of what the package is made of, installed into a throwaway
folder with this venv's build tools and dependencies (nothing downloaded), and run from a
directory outside the checkout: the library, the components and the pipelines import by their
package names, and ``lmforge pipeline compile`` writes the committed YAML.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What the wheel is built from (pyproject.toml's package-dir), source folder -> import name.
PACKAGES = {
    "src/lmforge": "lmforge",
    "components": "lmforge_components",
    "pipelines": "lmforge_pipelines",
}
PIPELINES = ("pretrain", "finetune", "full", "sweep")


def modules(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix() for p in root.rglob("*.py") if "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install --target`` of a copy of the project (no deps, no build isolation)."""
    tmp = tmp_path_factory.mktemp("install")
    project = tmp / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for src in PACKAGES:
        shutil.copytree(REPO / src, project / src, ignore=ignore)
    site = tmp / "site"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--target",
            str(site),
            str(project),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return site


def run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """This venv's interpreter with the installed copy first on the path, from ``cwd``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LMFORGE_"))}
    env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_wheel_holds_every_module_of_the_three_packages(installed):
    for src, name in PACKAGES.items():
        missing = modules(REPO / src) - modules(installed / name)
        assert not missing, (
            f"{src}: {sorted(missing)[:5]} not in the wheel; add the package to "
            "[tool.setuptools] packages in pyproject.toml"
        )


def test_installed_compile_from_outside_the_checkout_writes_the_committed_yaml(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run_installed(
        installed,
        elsewhere,
        "-c",
        "import json, lmforge, lmforge_components, lmforge_pipelines, lmforge_pipelines.full; "
        "print(json.dumps([m.__file__ for m in (lmforge, lmforge_components, lmforge_pipelines)]))",
    )
    assert where.returncode == 0, where.stderr
    for path in json.loads(where.stdout):
        assert Path(path).is_relative_to(installed), path  # the installed copy, not the checkout

    out = tmp_path / "compiled"
    proc = run_installed(
        installed,
        elsewhere,
        "-m",
        "lmforge.cli",
        "pipeline",
        "compile",
        "--out-dir",
        str(out),
        "--params",
        str(REPO / "params.yaml"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in PIPELINES:
        committed = (REPO / "pipelines" / name / "pipeline.yaml").read_text()
        assert (out / name / "pipeline.yaml").read_text() == committed, name
    assert not (elsewhere / "pipelines").exists()  # --out-dir, not the cwd's default
