"""The pretrain step: the decoder LM on the tokenize stage's packed blocks.

``pretrain(cfg, tokenized_dir, out_dir)`` runs as one process or as one rank of many (torchrun,
a PyTorchJob replica): ranks come from the environment. Output folder (rank 0 writes it):

- ``model/``: HF model directory (safetensors, config) with the tokenizer copied in;
  with ``pretrain.init_from`` it continues that model (its architecture and tokenizer:
  ``lmforge.train.start.continued_model``) instead of a new decoder of the ``model`` section;
- ``checkpoints/step-*/``: DCP checkpoints (a rerun resumes from the latest when
  ``lmforge.train.step.fingerprint`` matches);
- ``metrics.json``: validation loss/perplexity, the unigram baseline's perplexity on the same
  blocks, parameters, FLOPs per token, tokens/s, MFU, peak memory;
- ``plots/loss.csv``: step, train_loss, val_loss (DVC plots).

- ``plots/loss.png``: the same curves with the unigram baseline (also an MLflow artifact).

MLflow (rank 0, ``lmforge.train.step.tracked``): a nested ``pretrain`` run with the config,
per-step metrics, the loss plot, the train/validation blocks as inputs (DVC md5 digests) and
``model/`` as the run's LoggedModel ``language_model`` (with its numbers and its checkpoints:
``lmforge.model_logging``; ``metrics.json``'s ``tracking.models`` names its id). A tracking
outage does not stop training: what could not be sent waits in ``tracking-buffer.jsonl`` and
``metrics.json``'s ``tracking`` section says so (``lmforge.tracking.replay`` sends it later).
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmforge import lineage, mkl_shim
from lmforge.config import Config
from lmforge.errors import DataError
from lmforge.metrics import perplexity_of, token_nll
from lmforge.model import build_config, build_model, measured_size, model_size
from lmforge.outputs import atomic_output_dir
from lmforge.tracking import dataset as input_dataset
from lmforge.tracking import is_number
from lmforge.train import step
from lmforge.train.data import BlockDataset, GlobalBatchSampler, check_tokenizer
from lmforge.train.distributed import Runtime, all_reduce_sum, barrier
from lmforge.train.flops import peak_flops
from lmforge.train.loop import fit
from lmforge.train.parallel import full_state_dict, meta_init
from lmforge.train.precision import resolve
from lmforge.train.result import PretrainResult  # the launcher reports it without torch
from lmforge.train.start import continued_model

log = logging.getLogger(__name__)


class LMTask:
    """Next-token prediction on packed blocks (the ``Task`` the loop trains)."""

    def __init__(
        self,
        train: BlockDataset,
        val: BlockDataset,
        sampler: GlobalBatchSampler,
        rt: Runtime,
        seq_len: int,
        eval_blocks: np.ndarray,
        micro_batch: int,
    ):
        self.train, self.val, self.sampler, self.rt = train, val, sampler, rt
        self.seq_len, self.micro = seq_len, micro_batch
        # Every rank evaluates the same number of batches (FSDP gathers need all of them).
        self.eval_blocks = eval_blocks[rt.rank :: rt.world_size]

    def batch(self, step: int, micro: int) -> torch.Tensor:
        idx = self.sampler.indices(step, micro, self.rt.rank)
        return self.train.batch(idx, self.seq_len).to(self.rt.device, non_blocking=True)

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return model(input_ids=batch, labels=batch).loss

    def tokens(self, batch: torch.Tensor) -> int:
        return batch.numel()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        batches = (
            self.val.batch(self.eval_blocks[i : i + self.micro], self.seq_len).to(self.rt.device)
            for i in range(0, len(self.eval_blocks), self.micro)
        )
        total, count = token_nll(model, batches)
        total, count = all_reduce_sum([total, float(count)], self.rt.device)
        val_loss = total / max(count, 1.0)
        return {"val_loss": val_loss, "val_perplexity": perplexity_of(val_loss)}


def eval_block_ids(n_val: int, cfg_batches: int, micro: int, world: int) -> np.ndarray:
    """The validation blocks used for val loss and the unigram baseline: the first ones, a
    multiple of the world size so every rank runs the same number of forward passes."""
    n = min(n_val, max(1, cfg_batches) * micro * world)
    n -= n % world
    if n == 0:
        raise DataError(f"validation split has {n_val} blocks, fewer than the {world} ranks")
    return np.arange(n)


def unigram_perplexity(
    train: BlockDataset, val: BlockDataset, blocks: np.ndarray, seq_len: int, vocab: int
) -> float:
    """Perplexity of add-one-smoothed training-split token frequencies on the same targets."""
    counts = np.zeros(vocab, dtype=np.float64)
    chunk = 4096
    for start in range(0, len(train), chunk):
        rows = np.asarray(train.tokens[start : start + chunk, :seq_len]).ravel()
        counts += np.bincount(rows, minlength=vocab)[:vocab]
    logp = np.log((counts + 1.0) / (counts.sum() + vocab))
    targets = np.asarray(val.tokens[np.asarray(blocks), 1:seq_len]).ravel()
    return float(np.exp(-logp[targets].mean()))


def pretrain(
    cfg: Config,
    tokenized_dir: Path,
    out_dir: Path,
    *,
    on_log: Callable | None = None,
    log_weights: bool = True,
) -> PretrainResult:
    """Train the decoder on ``tokenized_dir/blocks`` and write ``out_dir`` (see module doc).

    ``on_log(step, row)``: also called with each row the loop logs (a sweep's pruner).
    ``log_weights=False`` (sweep trials, scaling rungs): the LoggedModel is recorded with its
    numbers but its weights are not uploaded (``lmforge.model_logging``)."""
    tokenized_dir, out_dir = Path(tokenized_dir), Path(out_dir)
    tcfg = cfg.pretrain
    blocks_dir, tok_dir = tokenized_dir / "blocks", tokenized_dir / "tokenizer"
    if not tok_dir.is_dir():
        raise DataError(f"{tok_dir}: missing tokenizer folder; run the tokenize stage first")
    train_ds, val_ds = BlockDataset(blocks_dir, "train"), BlockDataset(blocks_dir, "validation")
    check_tokenizer(tok_dir, train_ds.meta)  # copied into the model: broken, it stops here
    meta = train_ds.meta
    seq_len = min(cfg.model.max_seq_len, meta.block_size)

    with step.process_group(tcfg) as rt:
        tracking = step.tracked(cfg, "pretrain", ("model", "pretrain"), out_dir, rt)
        with tracking as tracker:
            if tcfg.init_from is not None:  # continued pretraining of a user's model
                on_meta = isinstance(meta_init(tcfg, rt), torch.device)  # FSDP rank > 0
                start = continued_model(cfg, blocks_dir, meta.vocab_size, meta.block_size, on_meta)
                model, hf_config, seq_len = start.model, start.config, start.seq_len
                size, shape = measured_size(model, seq_len), start.identity
            else:
                hf_config = build_config(cfg.model, meta.vocab_size, meta.eos_id, meta.pad_id)
                size, shape = model_size(hf_config, seq_len), asdict(cfg.model)
                with meta_init(tcfg, rt):  # FSDP: only rank 0 allocates the whole model
                    model = build_model(hf_config, seed=tcfg.seed)
            sampler = GlobalBatchSampler(
                len(train_ds),
                tcfg.micro_batch_size,
                tcfg.grad_accum_steps,
                rt.world_size,
                tcfg.seed,
            )
            eval_ids = eval_block_ids(
                len(val_ds), tcfg.eval_batches, tcfg.micro_batch_size, rt.world_size
            )
            task = LMTask(train_ds, val_ds, sampler, rt, seq_len, eval_ids, tcfg.micro_batch_size)
            inputs = _inputs(blocks_dir) if rt.is_main else []
            tracker.log_inputs(inputs)
            precision = resolve(tcfg.precision, rt.device)  # the loop resolves the same way
            peak = peak_flops(rt.device, precision.dtype, seconds=0.3)
            shim = mkl_shim.state() if rt.device.type == "cpu" else ""
            tracker.log_params(
                {
                    "n_params": size.n_params,
                    "flops_per_token": size.flops_per_token,
                    "world_size": rt.world_size,
                    "seq_len": seq_len,
                    "global_batch": sampler.global_batch,
                    "matmul_peak_flops": f"{peak:.4g}",
                    "precision": precision.name,
                    "precision_reason": precision.reason,
                    "mkl_shim": shim,
                }
            )
            result = fit(
                model,
                task,
                tcfg,
                rt,
                checkpoint_dir=step.checkpoint_dir(out_dir),
                fingerprint=step.fingerprint(tcfg, shape, asdict(meta)),
                flops_per_token=size.flops_per_token,
                peak_flops=peak,
                on_log=step.both(tracker.step_logger(), on_log),
            )
            evals = [r for r in result.history if "val_loss" in r]
            val_loss = evals[-1]["val_loss"] if evals else task.evaluate(result.model)["val_loss"]
            state = full_state_dict(result.model)
            outcome = PretrainResult(
                val_loss=val_loss,
                val_perplexity=perplexity_of(val_loss),
                unigram_perplexity=unigram_perplexity(
                    train_ds, val_ds, eval_ids, seq_len, hf_config.vocab_size
                ),
                train_loss=result.train_loss,
                steps=result.step,
                tokens_seen=result.tokens_seen,
                n_params=size.n_params,
                flops_per_token=size.flops_per_token,
                tokens_per_s=result.tokens_per_s,
                mfu=result.mfu,
                peak_memory_bytes=result.peak_memory_bytes,
                train_seconds=result.train_seconds,
                world_size=rt.world_size,
                resumed_from=result.resumed_from,
                model_dir=str(out_dir / "model"),
                precision=precision.name,
                precision_reason=precision.reason,
                mkl_shim=shim,
            )
            if rt.is_main:
                _write_outputs(out_dir, hf_config, state, tok_dir, result.history, outcome)
                _log_final(tracker, out_dir, outcome)
                spec = _model_spec(cfg, out_dir, outcome, result.history, inputs)
                tracker.log_model({**spec, "weights": log_weights})
        if rt.is_main:  # again, now with what the tracker could not send
            outcome.tracking = tracking.summary or None
            step.write_metrics(out_dir, outcome, tracking.summary)
        barrier()
        return outcome


def _write_outputs(out_dir, hf_config, state, tok_dir, history, outcome) -> None:
    """Each of model/, plots/, metrics.json appears whole (temp name, then rename)."""
    with atomic_output_dir(out_dir / "model") as model_dir:
        model = _empty_model(hf_config)
        model.load_state_dict(state, assign=True)  # the gathered tensors, not copies into new ones
        model.tie_weights()  # assign gave lm_head its own tensor: share the embedding's again
        model.save_pretrained(model_dir, safe_serialization=True)
        for f in tok_dir.iterdir():
            if f.is_file():
                shutil.copy2(f, model_dir / f.name)
    with atomic_output_dir(out_dir / "plots") as plots, (plots / "loss.csv").open("w") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "train_loss", "val_loss"])
        for row in history:
            writer.writerow(
                [int(row["step"]), _fmt(row.get("train_loss")), _fmt(row.get("val_loss"))]
            )
    step.write_metrics(out_dir, outcome, {})


def _empty_model(hf_config):
    """A model of ``hf_config``'s class to load the trained state into: lmforge's own decoders
    as ``build_model`` makes them, any other (``pretrain.init_from``) through the auto class.
    Built on the meta device: no memory and no random init, which for a 7B model on rank 0 took
    minutes while the other ranks waited at the closing barrier."""
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

    with torch.device("meta"):
        if type(hf_config) in (LlamaConfig, MistralConfig):
            return build_model(hf_config)
        return AutoModelForCausalLM.from_config(hf_config)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.5f}"


def _log_final(tracker, out_dir: Path, outcome: PretrainResult) -> None:
    """The run's final numbers, the loss plot (written to ``plots/loss.png`` first, so a buffered
    record can point at it), the metrics file and the model folder."""
    per_step = {
        "train_loss",
        "val_loss",
        "val_perplexity",
        "tokens_per_s",
        "mfu",
        "peak_memory_bytes",
    }
    final = {k: float(v) for k, v in asdict(outcome).items() if is_number(v) and k not in per_step}
    tracker.log_metrics(final, step=outcome.steps)
    _plot_loss(out_dir / "plots", outcome)
    tracker.log_artifact(out_dir / "plots" / "loss.png", "plots")
    tracker.log_artifact(out_dir / "plots" / "loss.csv", "plots")
    tracker.log_artifact(out_dir / "metrics.json")


def _inputs(blocks_dir: Path) -> list[dict]:
    """The packed blocks the run trains and validates on, digested as DVC does."""

    return [
        input_dataset(blocks_dir / f"{split}.bin", f"blocks-{split}", context)
        for split, context in (("train", "training"), ("validation", "validation"))
        if (blocks_dir / f"{split}.bin").is_file()
    ]


def _model_spec(cfg, out_dir: Path, outcome: PretrainResult, history, inputs) -> dict:
    """``model/`` as the run's LoggedModel (its numbers measured on the validation blocks), its
    checkpoints ranked by validation loss."""
    from lmforge.model_logging import checkpoints

    val = next((d for d in inputs if d["context"] == "validation"), None)
    return {
        "name": lineage.LM_MODEL,
        "path": "model",
        "task": "text-generation",
        "step": outcome.steps,
        "metrics": {
            "val_loss": outcome.val_loss,
            "val_perplexity": outcome.val_perplexity,
            "unigram_perplexity": outcome.unigram_perplexity,
        },
        "dataset": val and {"name": val["name"], "digest": val["digest"]},
        "example": list(cfg.evaluate.sample_prompts[:1]) or ["Once upon a time"],
        "output_example": ["Once upon a time there was"],
        "params": {"max_new_tokens": cfg.evaluate.sample_max_new_tokens, "do_sample": False},
        "tags": {"lmforge.stage": "pretrain"},
        "checkpoints": checkpoints(step.checkpoint_dir(out_dir), history, out_dir),
    }


def _plot_loss(plots: Path, outcome: PretrainResult) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader((plots / "loss.csv").open()))
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("train_loss", "val_loss"):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r[key]]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=key, marker="." if key == "val_loss" else None)
    ax.axhline(math.log(outcome.unigram_perplexity), ls="--", c="gray", label="unigram")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    fig.savefig(plots / "loss.png", dpi=100)
    plt.close(fig)
