"""The training loop, checkpoints and the pretrain step, single process on CPU (micro models)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from lmforge import lineage
from lmforge.config import TrainConfig, load_config
from lmforge.errors import DataError, TrainingError
from lmforge.train.checkpoint import SafeFileSystemReader, verify
from lmforge.train.data import GlobalBatchSampler
from lmforge.train.distributed import Runtime, torchrun_command
from lmforge.train.loop import fit
from lmforge.train.optim import lr_at
from lmforge.train.pretrain import pretrain
from lmforge.train.synthetic import write_synthetic_tokenized

MICRO = [
    "model.n_layers=2",
    "model.d_model=64",
    "model.n_heads=4",
    "model.max_seq_len=32",
    "pretrain.max_steps=40",
    "pretrain.micro_batch_size=8",
    "pretrain.warmup_steps=5",
    "pretrain.lr=0.01",
    "pretrain.log_every=5",
    "pretrain.eval_every=20",
    "pretrain.eval_batches=4",
    "pretrain.ckpt_every=20",
    "pretrain.precision=fp32",
    "pretrain.num_threads=1",
]


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory) -> Path:
    return write_synthetic_tokenized(tmp_path_factory.mktemp("data") / "tokenized")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module (creating a sqlite store takes seconds); one process."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            mp.delenv(var, raising=False)
        yield [f"tracking.artifact_location={root / 'mlartifacts'}"]


def config(store, *extra):
    return load_config(None, [*MICRO, *store, *extra])


def loss_rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "plots" / "loss.csv").open()))


# ------------------------------------------------------------------------------ schedule, data


def test_warmup_then_cosine_to_the_floor():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(111)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))  # decays monotonically
    assert lrs[60] == pytest.approx(0.55)  # halfway: the midpoint of lr and the floor
    assert lrs[110] == pytest.approx(0.1)


def test_sampler_gives_every_world_size_the_same_global_batch():
    single = GlobalBatchSampler(50, micro_batch=8, grad_accum=1, world_size=1, seed=7)
    ddp = GlobalBatchSampler(50, micro_batch=2, grad_accum=2, world_size=2, seed=7)
    for step in range(20):  # crosses epochs (50 items, 8 per step)
        a = set(single.indices(step, 0, 0).tolist())
        b = {i for m in range(2) for r in range(2) for i in ddp.indices(step, m, r).tolist()}
        assert a == b
    epoch0 = np.concatenate([single.indices(s, 0, 0) for s in range(7)])[:50]
    assert sorted(epoch0.tolist()) == list(range(50))  # a permutation: no repeats in an epoch
    other_seed = GlobalBatchSampler(50, 8, 1, 1, seed=8)
    assert not np.array_equal(other_seed.indices(0, 0, 0), single.indices(0, 0, 0))


def test_missing_or_inconsistent_blocks_are_data_errors(tmp_path, store):
    with pytest.raises(DataError, match="tokenizer"):
        pretrain(config(store), tmp_path, tmp_path / "out")
    data = write_synthetic_tokenized(tmp_path / "tok", n_blocks={"train": 8, "validation": 2})
    with (data / "blocks" / "train.bin").open("ab") as fh:
        fh.write(b"\0\0")
    with pytest.raises(DataError, match=r"train\.bin: expected"):
        pretrain(config(store), data, tmp_path / "out")
    assert not (tmp_path / "out" / "model").exists()


def test_a_broken_tokenizer_stops_pretrain_naming_the_file(tmp_path, store):
    data = write_synthetic_tokenized(tmp_path / "tok", n_blocks={"train": 8, "validation": 2})
    broken = data / "tokenizer" / "tokenizer.json"
    broken.write_text('{"version": "1.0", "model": {"type": "nonsense"}}')
    with pytest.raises(DataError) as err:
        pretrain(config(store), data, tmp_path / "out")
    assert str(err.value).startswith(f"{broken}: not a loadable tokenizer")
    assert "re-run the tokenize stage" in str(err.value)
    assert not (tmp_path / "out" / "model").exists()


def test_torchrun_command_drops_nproc_and_keeps_the_rest():
    cmd = torchrun_command(2, ["pretrain", "--backend", "inline", "--nproc", "2", "--out", "x"])
    assert cmd[1:3] == ["--nproc-per-node=2", "--max-restarts=0"]
    assert cmd[-5:] == ["pretrain", "--backend", "inline", "--out", "x"]


# ------------------------------------------------------------------------------ the step


def test_pretrain_writes_the_contract_and_beats_the_unigram_model(tokenized, tmp_path, store):
    out = tmp_path / "pretrain"
    result = pretrain(config(store), tokenized, out)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_perplexity"] == pytest.approx(result.val_perplexity)
    # The synthetic chain has 3 successors per token; the unigram model sees ~125 tokens.
    assert metrics["unigram_perplexity"] > 50
    assert metrics["val_perplexity"] < metrics["unigram_perplexity"] / 5
    assert metrics["steps"] == 40 and metrics["tokens_seen"] == 40 * 8 * 32
    assert metrics["tokens_per_s"] > 0 and 0 < metrics["mfu"] < 1.5

    rows = loss_rows(out)
    assert [int(r["step"]) for r in rows] == list(range(5, 41, 5))
    assert [r["val_loss"] != "" for r in rows].count(True) == 2
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]) - 1

    # The model folder is self-contained: HF classes load it with its tokenizer.
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = PreTrainedTokenizerFast.from_pretrained(out / "model")
    assert (out / "model" / "model.safetensors").exists()
    ids = torch.tensor([tok("w1 w2 w3")["input_ids"]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert math.isfinite(loss.item())
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-00000020",
        "step-00000040",
    ]


def test_mlflow_run_has_params_metrics_plot_and_model(tokenized, tmp_path, store):
    import mlflow

    pretrain(
        config(store, "pretrain.max_steps=10", "pretrain.eval_every=10"), tokenized, tmp_path / "o"
    )
    runs = mlflow.search_runs(
        experiment_names=["lmforge"], output_format="list", order_by=["start_time DESC"]
    )
    run = next(r for r in runs if r.data.tags.get("lmforge.stage") == "pretrain")
    assert run.info.status == "FINISHED"
    assert run.data.params["model.d_model"] == "64" and "n_params" in run.data.params
    for key in (
        "train_loss",
        "val_loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "mfu",
        "peak_memory_bytes",
        "unigram_perplexity",
    ):
        assert key in run.data.metrics, key
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [5, 10]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    # The weights once, as the run's LoggedModel (MLflow 3), not as a second artifact folder.
    assert {"plots", "metrics.json"} <= artifacts and "model" not in artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/loss.png" in plots
    model = client.get_logged_model(lineage.trained_models(tmp_path / "o")[lineage.LM_MODEL])
    assert model.source_run_id == run.info.run_id
    model_files = {  # the transformers flavour keeps the weights under model/
        Path(a.path).name for a in client.list_logged_model_artifacts(model.model_id, "model")
    }
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= model_files


# ------------------------------------------------------------------------------ checkpoints


def test_resume_continues_the_same_run(tokenized, tmp_path, store):
    whole = tmp_path / "whole"
    pretrain(config(store), tokenized, whole)
    # Same config, stopped after the step-20 checkpoint, then restarted.
    part = tmp_path / "part"
    pretrain(config(store, "pretrain.max_steps=40", "pretrain.ckpt_every=20"), tokenized, part)
    import shutil

    shutil.rmtree(part / "checkpoints" / "step-00000040")
    shutil.rmtree(part / "model")
    resumed = pretrain(config(store), tokenized, part)
    assert resumed.resumed_from == 20
    a, b = loss_rows(whole), loss_rows(part)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert float(ra["train_loss"]) == pytest.approx(float(rb["train_loss"]), abs=1e-5)
    assert json.loads((part / "metrics.json").read_text())["val_loss"] == pytest.approx(
        json.loads((whole / "metrics.json").read_text())["val_loss"], abs=1e-5
    )


def test_a_truncated_checkpoint_is_skipped_for_the_previous_one(tokenized, tmp_path, store, caplog):
    out = tmp_path / "out"
    pretrain(config(store), tokenized, out)
    latest = out / "checkpoints" / "step-00000040"
    shard = latest / "__0_0.distcp"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # a write cut short
    assert verify(latest) is None
    (out / "checkpoints" / ".tmp-step-00000060").mkdir()  # a crash before the rename
    result = pretrain(config(store), tokenized, out)
    assert result.resumed_from == 20
    assert "truncated" in caplog.text
    assert not (out / "checkpoints" / ".tmp-step-00000060").exists()
    assert result.steps == 40


def test_config_changes_start_afresh_instead_of_resuming(tokenized, tmp_path, store):
    out = tmp_path / "out"
    pretrain(config(store, "pretrain.max_steps=20"), tokenized, out)
    result = pretrain(config(store, "pretrain.max_steps=20", "pretrain.lr=0.005"), tokenized, out)
    assert result.resumed_from is None


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_loading_never_unpickles_arbitrary_objects(tokenized, tmp_path, store):
    out = tmp_path / "out"
    pretrain(config(store, "pretrain.max_steps=20"), tokenized, out)
    folder = out / "checkpoints" / "step-00000020"
    reader = SafeFileSystemReader(folder)
    assert reader.read_metadata().state_dict_metadata  # the real metadata passes
    (folder / ".metadata").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(TrainingError, match=r"refused .*posix\.system|refused .*os\.system"):
        reader.read_metadata()
    buf = io.BytesIO()
    pickle.dump({"x": _Evil()}, buf)
    (folder / ".metadata").write_bytes(buf.getvalue())
    with pytest.raises(TrainingError, match="refused"):
        reader.read_metadata()


# ------------------------------------------------------------------------------ the loop


class _NanAt:
    """A regression task whose loss turns NaN at one step: the guard must stop there."""

    def __init__(self, bad_step: int):
        self.bad_step, self.step = bad_step, 0
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 4, generator=gen)
        self.y = self.x.sum(dim=1, keepdim=True)

    def batch(self, step, micro):
        self.step = step
        return self.x[(step * 8) % 64 :][:8], self.y[(step * 8) % 64 :][:8]

    def loss(self, model, batch):
        x, y = batch
        loss = torch.nn.functional.mse_loss(model(x), y)
        return loss * float("nan") if self.step == self.bad_step else loss

    def tokens(self, batch):
        return batch[0].shape[0]

    def evaluate(self, model):
        return {"val_loss": float(self.loss(model, (self.x, self.y)))}


def test_divergence_guard_stops_with_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    cfg = TrainConfig(
        max_steps=30,
        warmup_steps=0,
        lr=0.01,
        ckpt_every=10,
        eval_every=0,
        precision="fp32",
        parallel="single",
    )
    with pytest.raises(TrainingError, match=r"diverged at step 15.*last good checkpoint: step 10"):
        fit(model, _NanAt(15), cfg, Runtime(), checkpoint_dir=tmp_path / "ck", progress=False)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["step-00000010"]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_gradient_accumulation_matches_the_full_batch():
    def run(micro, accum):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        task = _NanAt(-1)
        task.batch = lambda step, m: (
            task.x[m * micro : (m + 1) * micro],
            task.y[m * micro : (m + 1) * micro],
        )
        cfg = TrainConfig(
            max_steps=5,
            micro_batch_size=micro,
            grad_accum_steps=accum,
            warmup_steps=0,
            eval_every=0,
            ckpt_every=0,
            precision="fp32",
            parallel="single",
        )
        return fit(model, task, cfg, Runtime(), progress=False).model.weight.detach().clone()

    assert torch.allclose(run(8, 1), run(2, 4), atol=1e-6)
