"""The image_validate component through KFP's local runner on a few generated captioned images
(image_augment has the same shape; its step is tested in process: tests/test_image_data.py)."""

import json

from kfp.dsl import Dataset

from lmforge_components.image_validate import build
from lmforge_components.testing import logged_metrics, micro_config, run_one


def _raw(root):
    from PIL import Image

    imgs = root / "imgs"
    imgs.mkdir(parents=True)
    rows = []
    for i in range(8):
        Image.new("RGB", (20 + i, 24), (i * 30, 120, 200 - i * 20)).save(imgs / f"p {i}.png")
        rows.append({"image": f"p {i}.png", "caption": f"A tile, shade {'abcdefgh'[i]}."})
    (imgs / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_image_validate_splits_and_logs_metrics(kfp_workdir, tmp_path):
    cfg = micro_config(
        "multimodal.data.captions_file=imgs/captions.jsonl",
        "multimodal.data.validation_share=0.25",
        "multimodal.data.test_share=0.25",
        store=kfp_workdir,
    )
    raw = _raw(tmp_path / "raw")
    task = run_one(build(cfg.kubeflow.image), cfg, kfp_workdir, {"raw_data": (raw, Dataset)})
    validated = task / "validated"
    assert all((validated / s / "pairs.jsonl").exists() for s in ("train", "val", "test"))
    logged = logged_metrics(task)
    assert logged["pairs"] == 8 and logged["train_pairs"] > 0
    assert logged["val_pairs"] + logged["test_pairs"] + logged["train_pairs"] == 8
