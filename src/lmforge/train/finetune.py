"""The finetune step: transfer learning from the pretrained decoder to the labelled task.

``finetune(cfg, pretrained_dir, augmented_dir, out_dir)`` puts a sequence-classification head on
the pretrained decoder (Hugging Face's ``*ForSequenceClassification``: a linear head on the last
non-pad token, i.e. last-token pooling) and trains it with the one training loop
(``lmforge.train.loop.fit`` with ``lmforge.train.classify.ClassifyTask``) — full fine-tuning or
LoRA (``lmforge.train.lora``) as ``finetune.method`` says. A baseline of the same architecture
from random weights gets the same budget (same steps, batch, schedule and data order), so the
gain of pretraining is measured, not assumed. The budget is ``finetune.max_epochs`` passes over the
training split (capped by ``max_steps``); each model stops early once ``early_stopping_patience``
evaluations passed without improving ``finetune.monitor``, and what is written (and so evaluated
and registered) is each model's best evaluation (``lmforge.train.best``; docs/finetune.md).
Output folder (rank 0 writes it):

- ``model/``: the fine-tuned classifier (HF dir, LoRA merged in) with the tokenizer;
- ``baseline/``: the from-scratch classifier, same layout;
- ``checkpoints/{model,baseline}/step-*/``: DCP checkpoints (a rerun resumes from the latest
  when ``lmforge.train.step.fingerprint`` matches: ``evaluate.*`` or cadence knobs may change);
- ``metrics.json``: validation accuracy / macro-F1 / loss of both at their best steps, steps
  trained, the budget, the best step and why training ended (``stop_reason``), parameters
  trained, and ``tracking`` (what MLflow did not get, if anything);
- ``plots/loss.csv``: step, train_loss, val_loss, baseline_train_loss, baseline_val_loss.

It runs as one process or as one rank of many (``finetune.parallel``), like pretraining, with the
same step skeleton (``lmforge.train.step``: process group, tolerant MLflow run, checkpoints).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from lmforge import lineage
from lmforge.config import Config
from lmforge.data.labels import task_labels
from lmforge.metrics import macro_f1
from lmforge.outputs import atomic_output_dir
from lmforge.tracking import dataset as input_dataset
from lmforge.tracking import is_number
from lmforge.train import step
from lmforge.train.best import BestKeeper, budgeted, kept_eval, monitored, steps_to_epochs
from lmforge.train.classify import ClassifyTask, collate, encode, read_labelled, with_eos_appended
from lmforge.train.distributed import barrier
from lmforge.train.loop import FitResult, fit
from lmforge.train.lora import apply_lora, merged
from lmforge.train.loss_csv import write_loss_csv
from lmforge.train.parallel import full_state_dict
from lmforge.train.start import starting_model

# Re-exported: evaluate, benchmarks and tests read and encode the labelled splits as training does.
__all__ = ["FinetuneResult", "collate", "encode", "finetune", "macro_f1", "read_labelled"]


@dataclass
class FinetuneResult:
    method: str
    steps: int
    val_accuracy: float
    val_macro_f1: float
    val_loss: float
    baseline_val_accuracy: float | None
    baseline_val_macro_f1: float | None
    baseline_val_loss: float | None
    trainable_params: int
    total_params: int
    train_examples: int
    model_dir: str
    resumed_from: int | None = None  # the fine-tuned model's checkpoint step, when resumed
    precision: str = ""  # what training computed in (fp32 | bf16), ``auto`` resolved
    precision_reason: str = ""  # why (lmforge.train.precision)
    budget_steps: int = 0  # max_epochs (capped by max_steps) in optimizer steps
    epochs: float = 0.0  # passes over the training split done
    monitor: str = ""  # what the best step and early stopping went by
    best_step: int | None = None  # the step whose weights model/ holds (its val_* above)
    stop_reason: str = ""  # budget reached / early stop at step N
    baseline_steps: int | None = None
    baseline_best_step: int | None = None
    baseline_stop_reason: str | None = None


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def label_maps(labels: list[str]) -> dict:
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def build_classifier(
    model_dir: Path, labels: list[str], pretrained: bool, seed: int, pad_id: int | None = None
):
    """The pretrained decoder with a fresh head, or (``pretrained=False``) the same architecture
    from random weights: the baseline. ``pad_id``: the token last-token pooling skips (a base
    model's config often has none, and GPT-2's head cannot batch without it)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(seed)  # the head (and the baseline) start identically on every rank
    extra = {**label_maps(labels), **({} if pad_id is None else {"pad_token_id": pad_id})}
    local = {"local_files_only": True, "trust_remote_code": False}  # never the hub, no code
    if pretrained:
        return AutoModelForSequenceClassification.from_pretrained(
            model_dir, **extra, **local, attn_implementation="sdpa"
        )
    config = AutoConfig.from_pretrained(model_dir, **extra, **local)
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")


def count_params(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------


def finetune(
    cfg: Config,
    pretrained_dir: Path | None,
    augmented_dir: Path,
    out_dir: Path,
    *,
    on_log: Callable | None = None,
    log_weights: bool = True,
) -> FinetuneResult:
    """Fine-tune the classifier and its from-scratch baseline; write ``out_dir`` (module doc).

    ``on_log(step, row)``: also called with each row the loop logs for the fine-tuned model
    (not the baseline): a sweep's pruner. With ``finetune.base_model`` set, training starts
    from that folder and ``pretrained_dir`` is not read (it may be None).
    ``finetune.task: sft`` is instruction tuning instead (``lmforge.train.finetune_sft``).
    ``log_weights=False`` (a sweep trial): the LoggedModels are recorded with their numbers but
    their weights are not uploaded (``lmforge.model_logging``)."""
    if cfg.finetune.task == "sft":
        from lmforge.train.finetune_sft import finetune_sft

        return finetune_sft(
            cfg, pretrained_dir, augmented_dir, out_dir, on_log=on_log, log_weights=log_weights
        )
    tcfg, out_dir = cfg.finetune, Path(out_dir)
    model_dir, tokenizer = starting_model(tcfg.base_model, pretrained_dir)
    tokenizer = with_eos_appended(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    labelled = Path(augmented_dir) / "labelled"
    labels = task_labels(cfg, labelled)  # listed, or recorded by validate from the train split
    train = encode(
        read_labelled(labelled / "train.jsonl", labels), tokenizer, labels, tcfg.max_length
    )
    val = encode(
        read_labelled(labelled / "validation.jsonl", labels), tokenizer, labels, tcfg.max_length
    )
    weights = step.file_identity(model_dir / "config.json", model_dir / "model.safetensors")
    data = {"labels": labels, "train": step.file_identity(labelled / "train.jsonl")}

    with step.process_group(tcfg) as rt:
        tcfg = budgeted(tcfg, len(train.ids), rt.world_size)  # max_steps: the run's steps
        tracking = step.tracked(cfg, "finetune", ("finetune",), out_dir, rt)
        with tracking as tracker:
            runs: dict[str, FitResult] = {}
            states: dict[str, dict] = {}
            variants = ["model", "baseline"] if tcfg.baseline else ["model"]
            for variant in variants:
                model = build_classifier(
                    model_dir, labels, variant == "model", tcfg.seed, tokenizer.pad_token_id
                )
                if tcfg.method == "lora" and variant == "model":
                    model = apply_lora(model, tcfg)
                if variant == "model":
                    trainable, total = count_params(model)
                task = ClassifyTask(train, val, tcfg, rt, pad_id, len(labels))
                start = {"variant": variant, "weights": weights if variant == "model" else None}
                # Each model trains until it is learned, by the same rule: a fair comparison.
                keeper = BestKeeper(monitored(cfg.finetune), tcfg.early_stopping_patience)
                runs[variant] = fit(
                    model,
                    task,
                    tcfg,
                    rt,
                    checkpoint_dir=step.checkpoint_dir(out_dir, variant),
                    fingerprint=step.fingerprint(tcfg, start, data),
                    on_log=step.both(
                        tracker.step_logger("" if variant == "model" else "baseline_"),
                        on_log if variant == "model" else None,
                    ),
                    stopping=keeper,
                )
                # The best evaluation's weights (every rank agrees on whether there is one).
                states[variant] = (
                    keeper.state
                    if keeper.best_step is not None
                    else full_state_dict(runs[variant].model)
                )
            result = _result(tcfg, runs, trainable, total, len(train.ids), out_dir, rt.world_size)
            tracker.log_params(
                {
                    "precision": result.precision,
                    "precision_reason": result.precision_reason,
                    "monitor": result.monitor,
                    "stop_reason": result.stop_reason,
                    "baseline_stop_reason": result.baseline_stop_reason or "",
                }
            )
            if rt.is_main:
                _write_outputs(cfg, labels, model_dir, tokenizer, states, runs, result, out_dir)
                tracker.log_metrics(
                    {k: float(v) for k, v in asdict(result).items() if is_number(v)}
                )
                tracker.log_artifact(out_dir / "plots", "plots")
                _log_models(tracker, labelled, labels, runs, out_dir, log_weights)
        if rt.is_main:  # again, now with what the tracker could not send
            step.write_metrics(out_dir, result, tracking.summary)
        barrier()
        return result


def _log_models(tracker, labelled: Path, labels, runs, out_dir: Path, weights: bool) -> None:
    """The labelled splits as the run's inputs; ``model/`` and ``baseline/`` as its LoggedModels,
    each with its own best validation numbers and checkpoints (``lmforge.model_logging``)."""
    from lmforge.model_logging import checkpoints

    splits = [
        input_dataset(labelled / f"{split}.jsonl", f"labelled-{split}", context)
        for split, context in (("train", "training"), ("validation", "validation"))
    ]
    tracker.log_inputs(splits)
    example = read_labelled(labelled / "validation.jsonl", labels)[:1]
    text = example[0]["text"][:300] if example else "A text to classify."
    for variant, name in (
        ("model", lineage.CLASSIFIER_MODEL),
        ("baseline", lineage.BASELINE_MODEL),
    ):
        if variant not in runs:
            continue
        run = runs[variant]
        best = kept_eval(run.history, run.stopping)
        tracker.log_model(
            {
                "name": name,
                "path": variant,
                "task": "text-classification",
                "step": run.stopping.best_step or run.step,
                "metrics": {k: float(v) for k, v in best.items() if k.startswith("val_")},
                "dataset": {"name": splits[1]["name"], "digest": splits[1]["digest"]},
                "example": [text],
                "output_example": [{"label": labels[0], "score": 0.5}],
                "tags": {"lmforge.stage": "finetune", "lmforge.variant": variant},
                "weights": weights,
                "checkpoints": checkpoints(
                    step.checkpoint_dir(out_dir, variant), run.history, out_dir
                ),
            }
        )


def _result(tcfg, runs, trainable, total, n_train, out_dir, world_size) -> FinetuneResult:
    baseline = runs.get("baseline")
    main, base = (
        kept_eval(runs["model"].history, runs["model"].stopping),
        kept_eval(baseline.history, baseline.stopping) if baseline else {},
    )
    return FinetuneResult(
        method=tcfg.method,
        steps=runs["model"].step,
        val_accuracy=main.get("val_accuracy", math.nan),
        val_macro_f1=main.get("val_macro_f1", math.nan),
        val_loss=main.get("val_loss", math.nan),
        baseline_val_accuracy=base.get("val_accuracy"),
        baseline_val_macro_f1=base.get("val_macro_f1"),
        baseline_val_loss=base.get("val_loss"),
        trainable_params=trainable,
        total_params=total,
        train_examples=n_train,
        model_dir=str(Path(out_dir) / "model"),
        resumed_from=runs["model"].resumed_from,
        precision=runs["model"].precision.name,
        precision_reason=runs["model"].precision.reason,
        budget_steps=tcfg.max_steps,
        epochs=round(steps_to_epochs(runs["model"].step, tcfg, n_train, world_size), 3),
        monitor=runs["model"].stopping.monitor,
        best_step=runs["model"].stopping.best_step,
        stop_reason=runs["model"].stopping.reason(runs["model"].step),
        baseline_steps=baseline.step if baseline else None,
        baseline_best_step=baseline.stopping.best_step if baseline else None,
        baseline_stop_reason=baseline.stopping.reason(baseline.step) if baseline else None,
    )


def _write_outputs(cfg, labels, model_dir, tokenizer, states, runs, result, out_dir) -> None:
    """Each of model/, baseline/, plots/, metrics.json appears whole (temp name, then rename);
    the checkpoints beside them stay for a rerun to resume from."""
    for variant, state in states.items():
        with atomic_output_dir(out_dir / variant) as tmp:
            model = build_classifier(model_dir, labels, False, 0, tokenizer.pad_token_id)
            if cfg.finetune.method == "lora" and variant == "model":
                model = merged(model, cfg.finetune, state)  # a plain HF classifier: no peft
            else:
                model.load_state_dict(state)
            model.config.pad_token_id = tokenizer.pad_token_id
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
    if "baseline" not in states:  # a baseline of an earlier run would be mistaken for this one's
        shutil.rmtree(out_dir / "baseline", ignore_errors=True)
    with atomic_output_dir(out_dir / "plots") as plots:
        write_loss_csv(plots / "loss.csv", runs)
    step.write_metrics(out_dir, result, {})
