"""The inputs stage: the model folders and pairs params.yaml points at, fingerprinted by content
so that DVC reruns the stages reading them exactly when they change (``lmforge.inputs``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hf_fixtures import make_hf_model

from lmforge.config import load_config
from lmforge.errors import DataError, TrainingError
from lmforge.inputs import FILE, fingerprint_inputs

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Path:
    return make_hf_model(tmp_path_factory.mktemp("base") / "gpt2", "gpt2")


@pytest.fixture
def model(gpt2, tmp_path) -> Path:
    return Path(shutil.copytree(gpt2, tmp_path / "model"))


def digests(tmp_path: Path, *overrides: str) -> dict:
    fingerprint_inputs(load_config(None, list(overrides)), tmp_path / "inputs")
    return json.loads((tmp_path / "inputs" / FILE).read_text())["inputs"]


def test_unset_inputs_are_null(tmp_path):
    assert digests(tmp_path) == dict.fromkeys(
        ("pretrain.init_from", "finetune.base_model", "finetune.sft_data")
    )


def test_the_digest_follows_the_files_content_and_nothing_else(model, tmp_path):
    field = f"finetune.base_model={model}"
    first = digests(tmp_path, field)["finetune.base_model"]
    assert first["path"] == str(model.resolve()) and first["files"] == len(list(model.iterdir()))
    os.utime(model / "config.json", (1, 1))  # touched, same bytes
    assert digests(tmp_path, field)["finetune.base_model"] == first

    weights = model / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1  # one bit of one weight: same size, same names
    weights.write_bytes(bytes(blob))
    changed = digests(tmp_path, field)["finetune.base_model"]
    assert changed["digest"] != first["digest"] and changed["bytes"] == first["bytes"]

    (model / ".cache").mkdir()  # a hidden file counts too: nothing is skipped
    (model / ".cache" / "note").write_text("x")
    added = digests(tmp_path, field)["finetune.base_model"]
    assert added["digest"] != changed["digest"] and added["files"] == changed["files"] + 1
    (model / ".cache" / "note").rename(model / ".cache" / "other")
    assert digests(tmp_path, field)["finetune.base_model"]["digest"] != added["digest"]


def test_a_pairs_file_and_the_same_model_for_both_fields(model, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "a", "response": "b"}\n')
    found = digests(
        tmp_path,
        f"pretrain.init_from={model}",
        f"finetune.base_model={model}",
        f"finetune.sft_data={pairs}",
    )
    assert found["pretrain.init_from"] == found["finetune.base_model"]
    assert found["finetune.sft_data"]["files"] == 1
    before = found["finetune.sft_data"]["digest"]
    pairs.write_text('{"prompt": "a", "response": "c"}\n')
    assert digests(tmp_path, f"finetune.sft_data={pairs}")["finetune.sft_data"]["digest"] != before


def test_unusable_paths_name_the_field(model, tmp_path):
    with pytest.raises(TrainingError, match=r"pretrain\.init_from: .*absent is not a folder"):
        digests(tmp_path, f"pretrain.init_from={tmp_path / 'absent'}")
    with pytest.raises(DataError, match=r"finetune\.sft_data: .*pairs\.csv does not exist"):
        digests(tmp_path, f"finetune.sft_data={tmp_path / 'pairs.csv'}")
    (model / "loop").symlink_to(model)
    with pytest.raises(DataError, match=r"symlink loop"):
        digests(tmp_path, f"finetune.base_model={model}")
    (model / "loop").unlink()
    (model / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(DataError, match=r"dangling: not a regular file"):
        digests(tmp_path, f"finetune.base_model={model}")
    assert not (tmp_path / "inputs").exists()


# ------------------------------------------------------------------------------ under DVC


def dvc(*args: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [str(BIN / "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def micro_repo(root: Path, base_model: Path) -> Path:
    """The repo's own ``inputs`` and ``pretrain`` stages in a fresh git + DVC project, on
    stand-in tokenize outputs (pretrain skips: ``finetune.base_model`` is set)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    picked = {name: stages[name] for name in ("inputs", "pretrain")}
    for dep in (d for stage in picked.values() for d in stage["deps"]):
        src, dst = REPO / dep, root / dep
        if dep.startswith("src/") and src.is_dir():
            shutil.copytree(
                src, dst, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True
            )
        elif dep.startswith("src/"):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    for name in ("tokenizer", "blocks"):  # never read: the stage stops before training
        (root / "outputs" / "tokenized" / name).mkdir(parents=True)
        (root / "outputs" / "tokenized" / name / "stand-in").write_text(name)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": picked}, sort_keys=False))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["finetune"]["base_model"] = str(base_model)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["git", "init", "--quiet"], cwd=root, check=True)
    dvc("init", "--quiet", cwd=root)
    return root


@pytest.mark.slow
def test_dvc_reruns_the_reader_only_when_the_base_model_changes(model, tmp_path):
    repo = micro_repo(tmp_path / "repo", model)
    first = dvc("repro", "pretrain", cwd=repo)
    assert "Running stage 'inputs'" in first and "Running stage 'pretrain'" in first
    assert json.loads((repo / "outputs/pretrain/metrics.json").read_text())["skipped"] is True

    second = dvc("repro", "pretrain", cwd=repo)  # inputs always runs; its file is unchanged
    assert "Running stage 'inputs'" in second and "Running stage 'pretrain'" not in second

    (model / "config.json").write_text((model / "config.json").read_text() + "\n")
    third = dvc("repro", "pretrain", cwd=repo)
    assert "Running stage 'pretrain'" in third
    assert not list((repo / "outputs/pretrain").rglob("*.safetensors"))
