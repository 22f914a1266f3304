"""Registry artifacts are data, never code: a version planted with code is refused by every path
that loads a registered model (evaluate's champion, generate, serve, deploy), naming the file,
and the planted code never runs.

The planted versions are version 1's real files (a model lmforge registered) with one change
each: a ``python_function`` flavour whose loader and code path are the attacker's (what
``mlflow models serve`` would import), torch weights in a pickle instead of safetensors, and a
pickle under a harmless name. A first test shows the planted code does run when MLflow itself
loads the version, so the refusals below are refusals of something real.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from serve_fixtures import *  # noqa: F403  (fixtures listed in its __all__)

from lmforge.errors import RegistryError


class _Runs:
    """Unpickling it runs ``code`` (what any pickle can do)."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def _writes(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('ran')\n"


def _pyfunc_code(root: Path, marker: Path) -> None:
    mlmodel = yaml.safe_load((root / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"].update(loader_module="evil", code="code")
    (root / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    (root / "code").mkdir()
    (root / "code" / "evil.py").write_text(
        _writes(marker) + "def _load_pyfunc(path, model_config=None):\n    raise SystemExit\n"
    )


def _pickled_weights(root: Path, marker: Path) -> None:
    (root / "model" / "model.safetensors").unlink()  # so that the pickle is what gets loaded
    (root / "model" / "pytorch_model.bin").write_bytes(pickle.dumps(_Runs(_writes(marker)), 4))


def _disguised_pickle(root: Path, marker: Path) -> None:
    (root / "components" / "tokenizer" / "notes.txt").write_bytes(
        pickle.dumps(_Runs(_writes(marker)), 4)
    )


PLANTS = {
    "pyfunc-code": (
        _pyfunc_code,
        [
            "code/evil.py: Python source",
            "python_function.loader_module = 'evil': a Python module imported on load",
            "python_function.code = 'code': code put on sys.path on load",
        ],
    ),
    "pickled-weights": (
        _pickled_weights,
        ["model/pytorch_model.bin: torch weights in a pickle", "model: no safetensors weights"],
    ),
    "disguised-pickle": (_disguised_pickle, ["components/tokenizer/notes.txt: holds a pickle"]),
}


def _plant(cfg, name: str, folder: Path, change, marker: Path) -> str:
    """A new version of ``name``: version 1's files (downloaded into ``folder``) with ``change``
    applied; now the champion."""
    import mlflow

    from lmforge import tracking

    client = tracking.client(cfg)
    root = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{name}/1", dst_path=str(folder), tracking_uri=client.tracking_uri
        )
    )
    change(root, marker)
    with mlflow.start_run(experiment_id=tracking.experiment_id(cfg, client)) as run:
        mlflow.log_artifacts(str(root), "planted")
    mv = client.create_model_version(
        name, f"runs:/{run.info.run_id}/planted", run_id=run.info.run_id
    )
    client.set_registered_model_alias(name, cfg.register.champion_alias, mv.version)
    return str(mv.version)


def test_mlflow_itself_runs_the_planted_code(registry, tmp_path):
    """The finding: what ``mlflow models serve`` calls (``mlflow.pyfunc.load_model``) imports
    the planted loader module from the planted code path."""
    marker = tmp_path / "code-ran"
    _plant(registry, registry.register.classifier_model_name, tmp_path / "v", _pyfunc_code, marker)
    assert not marker.exists()
    load = "import sys, mlflow.pyfunc; mlflow.pyfunc.load_model(sys.argv[1])"
    subprocess.run([sys.executable, "-c", load, str(tmp_path / "v")], timeout=300, check=False)
    assert marker.exists()


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_every_load_path_refuses_a_planted_version_naming_the_file(
    plant, registry, tmp_path, monkeypatch
):
    from lmforge import tracking
    from lmforge.evaluate import champion
    from lmforge.serve.generate import Sampling, generate
    from lmforge.serve.kserve import resolve
    from lmforge.serve.server import start

    cfg = registry
    change, reasons = PLANTS[plant]
    marker = tmp_path / "code-ran"
    lm, clf = cfg.register.lm_model_name, cfg.register.classifier_model_name
    lm_version = _plant(cfg, lm, tmp_path / "lm", change, marker)
    clf_version = _plant(cfg, clf, tmp_path / "clf", change, marker)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the downloads go
    client = tracking.client(cfg)
    loads = {
        f"models:/{clf}/{clf_version}": {
            "evaluate": lambda: champion(cfg),
            "serve": lambda: start(cfg, clf),
            "deploy": lambda: resolve(cfg, client, clf, cfg.register.champion_alias),
        },
        f"models:/{lm}/{lm_version}": {
            "generate": lambda: generate(cfg, f"models:/{lm}@champion", ["x"], Sampling()),
        },
    }
    for what, paths in loads.items():
        for path, load in paths.items():
            with pytest.raises(RegistryError) as refused:
                load()
            message = str(refused.value)
            assert message.startswith(f"{what}: refused, loading it could run code"), path
            for reason in reasons:
                assert reason in message, (path, message)
    assert not marker.exists()  # nothing from the registry ran
    assert list(scratch.iterdir()) == []  # and no download was left behind


def _set_flavor(**changes):
    def change(root: Path) -> None:
        mlmodel = yaml.safe_load((root / "MLmodel").read_text())
        for dotted, value in changes.items():
            *path, key = dotted.split(".")
            node = mlmodel
            for part in path:
                node = node.setdefault(part, {})
            node[key] = value
        (root / "MLmodel").write_text(yaml.safe_dump(mlmodel))

    return change


def _symlink(root: Path) -> None:
    (root / "model" / "extra.json").symlink_to("/etc/hostname")


def _config_pipeline(root: Path) -> None:
    config = json.loads((root / "model" / "config.json").read_text())
    config["custom_pipelines"] = {"text-classification": {"impl": "evil.Pipe"}}
    (root / "model" / "config.json").write_text(json.dumps(config))


VARIANTS = {
    "other-flavour": (
        _set_flavor(**{"flavors.sklearn": {"pickled_model": "model.txt"}}),
        "MLmodel flavors.sklearn: a flavour other than transformers",
    ),
    "hub-source": (
        _set_flavor(**{"flavors.transformers.source_model_revision": "main"}),
        "flavors.transformers.source_model_revision: loads from outside this model",
    ),
    "weights-elsewhere": (
        _set_flavor(**{"flavors.transformers.model_binary": "../../elsewhere"}),
        "model_binary = '../../elsewhere': outside the model's folder",
    ),
    "model-from-code": (
        _set_flavor(**{"flavors.python_function.model_code_path": "model.txt"}),
        "flavors.python_function.model_code_path = 'model.txt': not lmforge's",
    ),
    "link": (_symlink, "model/extra.json: a symbolic link"),
    "custom-pipeline": (_config_pipeline, "model/config.json.custom_pipelines = "),
}


@pytest.mark.parametrize("variant", ["as-registered", *sorted(VARIANTS)])
def test_the_check_accepts_what_lmforge_registers_and_nothing_that_loads_from_elsewhere(
    variant, registry, tmp_path
):
    import mlflow

    from lmforge import tracking
    from lmforge.registry.loading import check_model_files

    name = registry.register.classifier_model_name
    root = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{name}/1",
            dst_path=str(tmp_path / "v"),
            tracking_uri=tracking.client(registry).tracking_uri,
        )
    )
    if variant == "as-registered":
        checked = check_model_files(root, "v")
        assert checked.model_dir == root / "model"
        return
    change, reason = VARIANTS[variant]
    change(root)
    with pytest.raises(RegistryError, match=r"^v: refused, loading it could run code") as refused:
        check_model_files(root, "v")
    assert reason in str(refused.value)
