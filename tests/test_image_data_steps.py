"""The image-data steps as the CLI and the components call them: tracked in MLflow, and a bad
input through the real console script is one paragraph and exit 1."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from image_fixtures import good_folder, write_captions

from lmforge.data.images.steps import image_augment, image_validate

LMFORGE = shutil.which("lmforge") or str(Path(sys.executable).parent / "lmforge")


def test_steps_log_params_metrics_and_reports(embedded_store, tmp_path):
    import dataclasses

    import mlflow

    cfg = embedded_store
    data = dataclasses.replace(
        cfg.multimodal.data, captions_file="imgs/captions.jsonl", validation_share=0.25
    )
    cfg = dataclasses.replace(cfg, multimodal=dataclasses.replace(cfg.multimodal, data=data))
    root = good_folder(tmp_path / "raw", n=6)
    validated = image_validate(cfg, root, tmp_path / "validated")
    augmented = image_augment(cfg, tmp_path / "validated", tmp_path / "augmented")
    assert augmented.pairs["train"] == validated.pairs["train"] + augmented.augmented
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    by_stage = {r.data.tags.get("lmforge.stage"): r for r in runs}
    check = by_stage["image-validate"].data
    assert check.metrics["duplicates_removed"] == 1 and check.metrics["metadata_stripped.gps"] == 1
    assert check.params["multimodal.data.captions_file"] == "imgs/captions.jsonl"
    assert by_stage["image-augment"].data.metrics["augmented"] == augmented.augmented


def test_cli_refusal_is_one_paragraph_and_writes_nothing(tmp_path):
    write_captions(tmp_path / "imgs" / "captions.tsv", [{"image": "a.png", "caption": "x"}])
    out = tmp_path / "validated"
    args = ["image-validate", "--data-dir", str(tmp_path), "--out", str(out)]
    args += ["--set", "multimodal.data.captions_file=imgs/captions.tsv"]
    proc = subprocess.run([LMFORGE, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"error: lmforge image-validate: {tmp_path}/imgs/captions.tsv")
    assert "set multimodal.data.captions_format" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert not out.exists()


def test_the_image_chain_is_its_own_dvc_file_outside_the_default_repro():
    import yaml

    repo = Path(__file__).resolve().parents[1]
    root = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    chain = yaml.safe_load((repo / "multimodal" / "dvc.yaml").read_text())["stages"]
    assert not any("image" in name or "image" in s["cmd"] for name, s in root.items())
    validate, augment = chain["image_validate"], chain["image_augment"]
    assert validate["wdir"] == augment["wdir"] == ".."
    assert validate["cmd"].startswith("lmforge image-validate --data-dir data ")
    assert {f"outputs/images/validated/{s}" for s in ("train", "val", "test")} <= set(
        validate["outs"]
    )
    assert set(augment["deps"]) >= {f"outputs/images/validated/{s}" for s in ("train", "val")}
    assert "multimodal.data" in validate["params"] and "augment" in augment["params"]
