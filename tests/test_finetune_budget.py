"""Fine-tuning until the task is learned: the epochs budget, early stopping on a validation
metric, the best evaluation's weights kept (also across a resume).

The loop trains a real task that stops improving: a linear model fitted to one linear map while
validation asks for another halfway along the path, so the validation loss falls, bottoms out
and rises again (what over-fitting looks like to early stopping).
"""

from __future__ import annotations

import math

import pytest
import torch

from lmforge.config import TrainConfig, load_config
from lmforge.errors import ConfigError
from lmforge.train.best import BEST_PREFIX, BestKeeper, budget_steps
from lmforge.train.distributed import Runtime
from lmforge.train.loop import fit


class Overfits:
    """Training pulls the weights to ``2``; validation is best at ``1``, on the way there."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 4, generator=gen)
        self.val_x = torch.randn(32, 4, generator=gen)

    def batch(self, step, micro):
        i = (step * 8) % 64
        x = self.x[i : i + 8]
        return x, x.sum(1, keepdim=True) * 2.0

    def loss(self, model, batch):
        return torch.nn.functional.mse_loss(model(batch[0]), batch[1])

    def tokens(self, batch):
        return batch[0].shape[0]

    def evaluate(self, model):
        target = self.val_x.sum(1, keepdim=True)
        return {"val_loss": float(torch.nn.functional.mse_loss(model(self.val_x), target))}


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 1, bias=False)
    torch.nn.init.zeros_(layer.weight)
    return layer


def cfg(**kw) -> TrainConfig:
    base = dict(
        max_steps=200,
        warmup_steps=0,
        lr=0.02,
        min_lr_ratio=1.0,  # a constant lr: a shorter run is a prefix of a longer one
        weight_decay=0.0,
        eval_every=2,
        ckpt_every=0,
        log_every=2,
        precision="fp32",
        parallel="single",
        num_threads=1,
    )
    return TrainConfig(**{**base, **kw})


def train(ck=None, patience=3, **kw):
    keeper = BestKeeper("val_loss", patience)
    net = model()
    result = fit(
        net, Overfits(), cfg(**kw), Runtime(), checkpoint_dir=ck, progress=False, stopping=keeper
    )
    return result, keeper, net


def evals(result) -> list[tuple[int, float]]:
    return [(int(r["step"]), r["val_loss"]) for r in result.history if "val_loss" in r]


def test_training_stops_after_patience_evaluations_without_improvement():
    result, keeper, _ = train(patience=3)
    seen = evals(result)
    best_step, best = min(seen, key=lambda e: e[1])
    assert 2 < best_step < 100  # the task does stop improving, well inside the budget
    assert (keeper.best_step, keeper.best_value) == (best_step, best)
    # Exactly `patience` evaluations after the best, each worse, and not one step more.
    after = [e for e in seen if e[0] > best_step]
    assert len(after) == 3 and all(loss > best for _, loss in after)
    assert result.step == keeper.stopped_at == best_step + 3 * 2
    assert keeper.reason(result.step) == (
        f"early stop at step {result.step}: val_loss did not improve for 3 evaluations "
        f"(best {best:.4g} at step {best_step})"
    )
    # Patience 0 trains the whole budget and still knows the best.
    full, kept, _ = train(patience=0, max_steps=60)
    assert full.step == 60 and kept.best_step == best_step
    assert kept.reason(60) == "budget reached: 60 steps"


def test_the_kept_weights_are_the_best_evaluations_not_the_last():
    _, keeper, last = train(patience=3)
    best_net = model()
    best_net.load_state_dict(keeper.state)
    with torch.no_grad():
        assert Overfits().evaluate(best_net)["val_loss"] == pytest.approx(keeper.best_value)
        assert Overfits().evaluate(last)["val_loss"] > keeper.best_value  # the last is worse
    # The same weights as a run that simply ended at the best step.
    _, _, prefix = train(patience=0, max_steps=keeper.best_step)
    assert torch.equal(keeper.state["weight"], prefix.weight.detach())


def test_a_rerun_of_a_stopped_run_trains_nothing_and_keeps_its_best(tmp_path):
    ck = tmp_path / "ck"
    first, kept, _ = train(ck, ckpt_every=2)
    assert sorted(p.name for p in ck.glob(f"{BEST_PREFIX}*")) == [
        f"{BEST_PREFIX}{kept.best_step:08d}.safetensors"  # older bests are gone
    ]
    again, keeper, _ = train(ck, ckpt_every=2)
    assert again.resumed_from == again.step == first.step  # stopped: nothing more to train
    assert (keeper.best_step, keeper.stopped_at) == (kept.best_step, kept.stopped_at)
    assert torch.equal(keeper.state["weight"], kept.state["weight"])


def test_an_interrupted_run_resumes_to_the_same_stop_and_best(tmp_path):
    whole, kept, _ = train(patience=3)
    ck = tmp_path / "ck"
    cut = kept.best_step + 2  # after the best, before the stop
    part, _, _ = train(ck, ckpt_every=2, max_steps=cut)
    assert part.step == cut
    resumed, keeper, _ = train(ck, ckpt_every=2)
    assert resumed.resumed_from == cut
    assert (resumed.step, keeper.best_step) == (whole.step, kept.best_step)
    assert torch.equal(keeper.state["weight"], kept.state["weight"])
    assert [s for s, _ in evals(resumed)] == [s for s, _ in evals(whole)]
    assert [v for _, v in evals(resumed)] == pytest.approx([v for _, v in evals(whole)])


def test_the_epochs_budget_is_the_step_count_over_the_global_batch():
    def steps(n_train, world=1, *overrides):
        return budget_steps(load_config(None, list(overrides)).finetune, n_train, world)

    # The task: 2,655 training records, micro batch 8: 332 steps an epoch.
    assert steps(2655, 1, "finetune.max_epochs=1") == math.ceil(2655 / 8) == 332
    assert steps(2655, 1, "finetune.max_epochs=3") == math.ceil(3 * 2655 / 8)
    assert steps(2655, 2, "finetune.max_epochs=3", "finetune.grad_accum_steps=2") == math.ceil(
        3 * 2655 / 32
    )
    assert steps(2655, 1, "finetune.max_epochs=0.5") == math.ceil(2655 / 16)
    assert steps(2655, 1, "finetune.max_epochs=3", "finetune.max_steps=100") == 100  # a cap
    assert steps(2655, 1, "finetune.max_epochs=0", "finetune.max_steps=7") == 7
    assert steps(3, 1, "finetune.max_epochs=0.1") == 1  # never zero steps
    with pytest.raises(ConfigError, match=r"finetune.max_epochs: 0 with max_steps 0"):
        load_config(None, ["finetune.max_epochs=0", "finetune.max_steps=0"])
    with pytest.raises(ConfigError, match=r"finetune.max_epochs: -1"):
        load_config(None, ["finetune.max_epochs=-1"])
    with pytest.raises(ConfigError, match=r"finetune.monitor: sft reports val_loss"):
        load_config(None, ["finetune.task=sft", "finetune.monitor=val_macro_f1"])


# ------------------------------------------------------------------------------ the real step


def written_scores(cfg, stages, model_dir):
    """The written classifier's validation numbers, computed as training computes them."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmforge.train.classify import ClassifyTask, encode, read_labelled

    labels = ["ham", "spam"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = read_labelled(stages["augmented"] / "labelled" / "validation.jsonl", labels)
    val = encode(rows, tokenizer, labels, cfg.finetune.max_length)
    net = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    task = ClassifyTask(val, val, cfg.finetune, Runtime(), tokenizer.pad_token_id, len(labels))
    with torch.no_grad():
        return task.evaluate(net)


def test_the_step_writes_and_reports_each_models_best_evaluation(
    tiny_stages, embedded_store, tmp_path
):
    import json

    from mlflow_fixtures import tiny_config

    from lmforge.train.finetune import finetune

    cfg = tiny_config(
        "finetune.max_steps=0",
        "finetune.max_epochs=6",
        "finetune.eval_every=2",
        "finetune.early_stopping_patience=2",
        "finetune.lr=0.01",  # a high lr: validation soon stops improving
        f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
    )
    out = tmp_path / "ft"
    result = finetune(cfg, tiny_stages["pretrain"], tiny_stages["augmented"], out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["budget_steps"] == math.ceil(6 * result.train_examples / 8)
    assert metrics["monitor"] == "val_macro_f1"
    for prefix, variant in (("", "model"), ("baseline_", "baseline")):
        steps, best = metrics[f"{prefix}steps"], metrics[f"{prefix}best_step"]
        if steps < metrics["budget_steps"]:  # stopped early: 2 evaluations after the best
            assert steps == best + 2 * 2
            assert metrics[f"{prefix}stop_reason"].startswith(f"early stop at step {steps}: ")
        else:
            assert metrics[f"{prefix}stop_reason"] == f"budget reached: {steps} steps"
        # The weights written are the best evaluation's: they score what metrics.json says.
        scores = written_scores(cfg, tiny_stages, out / variant)
        assert scores["val_macro_f1"] == pytest.approx(metrics[f"{prefix}val_macro_f1"])
        assert scores["val_loss"] == pytest.approx(metrics[f"{prefix}val_loss"], rel=1e-4)
    assert metrics["steps"] < metrics["budget_steps"]  # this task stops improving
    # MLflow says it too: the best step as a metric, why training ended as a parameter.
    import mlflow

    run = mlflow.MlflowClient().get_run(metrics["tracking"]["run_id"])
    assert run.data.params["stop_reason"] == metrics["stop_reason"]
    assert run.data.metrics["best_step"] == metrics["best_step"]
    assert run.data.metrics["baseline_best_step"] == metrics["baseline_best_step"]


def test_a_monitor_the_task_does_not_report_is_named():
    from lmforge.errors import TrainingError

    keeper = BestKeeper("val_macro_f1", 3)
    with pytest.raises(TrainingError, match=r"monitor: val_macro_f1 is not among .*val_loss"):
        fit(model(), Overfits(), cfg(max_steps=4), Runtime(), progress=False, stopping=keeper)


def test_a_rerun_with_another_patience_goes_on_or_ends_by_the_new_one(tmp_path):
    ck = tmp_path / "ck"
    first, kept, _ = train(ck, patience=3, ckpt_every=2)
    longer, keeper, _ = train(ck, patience=4, ckpt_every=2)  # one evaluation more
    assert longer.resumed_from == first.step and longer.step == first.step + 2
    assert keeper.best_step == kept.best_step and keeper.stopped_at == longer.step
    shorter, keeper, _ = train(ck, patience=2, ckpt_every=2)  # past it already: ends at once
    assert shorter.resumed_from == shorter.step == longer.step
    assert keeper.stopped_at == longer.step and keeper.best_step == kept.best_step


def test_a_tie_on_the_monitor_goes_to_the_lower_validation_loss():
    """Macro-F1 moves in steps of a few records on a small validation split: two evaluations
    often tie, and the one with the lower loss is the better model to keep."""
    keeper = BestKeeper("val_macro_f1", 3)
    model = torch.nn.Linear(2, 1)
    keeper.observe(2, {"val_macro_f1": 0.5, "val_loss": 0.9}, model)
    keeper.observe(4, {"val_macro_f1": 0.5, "val_loss": 0.7}, model)
    assert keeper.best_step == 4 and keeper.since_best == 0
    keeper.observe(6, {"val_macro_f1": 0.5, "val_loss": 0.8}, model)
    assert keeper.best_step == 4 and keeper.since_best == 1
