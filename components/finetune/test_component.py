"""The finetune component through KFP's local runner from a micro pretrained model."""

from kfp.dsl import Dataset, Model

from lmforge_components.finetune import build
from lmforge_components.testing import logged_metrics, micro_config, run_one


def test_finetune_writes_classifier_and_baseline(upstream, kfp_workdir):
    cfg = micro_config(store=kfp_workdir)
    inputs = {
        "pretrained": (upstream["pretrain"], Model),
        "augmented": (upstream["augmented"], Dataset),
    }
    task = run_one(build(), cfg, kfp_workdir, inputs)
    finetuned = task / "finetuned"
    assert (finetuned / "model" / "config.json").exists()
    assert (finetuned / "baseline").is_dir()
    assert logged_metrics(task)
