"""The finetune step with ``finetune.task: sft``: instruction tuning of the causal LM.

``finetune_sft(cfg, pretrained_dir, augmented_dir, out_dir)`` (what ``finetune`` calls for that
task) trains the decoder (``finetune.base_model``, else the pretrain output) on prompt/response
pairs (``lmforge.data.sft_pairs``) with the one training loop and ``lmforge.train.sft.SftTask``:
loss on the response tokens only, length-bucketed batches; full or LoRA (merged before saving).
Output folder (rank 0 writes it), the classifier's layout where it can be:

- ``model/``: the tuned causal LM with its tokenizer, whose saved chat template is the one the
  pairs were formatted with (evaluate and serving format prompts with it);
- ``baseline/``: the untuned model to compare with (``finetune.baseline``): the starting weights
  (hard links where the file system allows) and the same tokenizer and template;
- ``pairs/{train,validation,test}.jsonl``: the pairs as split (``{"prompt", "response"}``),
  the held-out ones being what evaluate scores;
- ``checkpoints/model/``, ``metrics.json`` (validation response loss and perplexity of both,
  padding efficiency, truncated pairs), ``plots/loss.csv``.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from lmforge import lineage
from lmforge.config import Config, FinetuneConfig
from lmforge.data.sft_pairs import load_pairs, write_pairs
from lmforge.outputs import atomic_output_dir
from lmforge.tracking import dataset as input_dataset
from lmforge.tracking import is_number
from lmforge.train import step
from lmforge.train.best import BestKeeper, budgeted, kept_eval, monitored, steps_to_epochs
from lmforge.train.distributed import barrier
from lmforge.train.loop import autocast, fit
from lmforge.train.parallel import full_state_dict
from lmforge.train.sft import PLAIN_TEMPLATE, SftTask, chat_template, encode_pairs
from lmforge.train.start import starting_model

WEIGHT_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")


@dataclass
class SftFinetuneResult:
    task: str
    method: str
    steps: int
    val_loss: float  # mean loss per response token, validation pairs
    val_perplexity: float
    baseline_val_loss: float | None  # the untuned model on the same pairs
    baseline_val_perplexity: float | None
    trainable_params: int
    total_params: int
    train_pairs: int
    validation_pairs: int
    test_pairs: int
    truncated_pairs: int  # training pairs cut to finetune.max_length
    batching: str
    padding_efficiency: float  # real tokens / (real + padding) in the training batches
    chat_template: str  # configured | tokenizer | plain
    model_dir: str
    resumed_from: int | None = None
    precision: str = ""
    precision_reason: str = ""
    budget_steps: int = 0  # max_epochs (capped by max_steps) in optimizer steps
    epochs: float = 0.0  # passes over the training pairs done
    monitor: str = ""  # what the best step and early stopping went by
    best_step: int | None = None  # the step whose weights model/ holds (its val_* above)
    stop_reason: str = ""  # budget reached / early stop at step N


def causal_lm(model_dir: Path, seed: int):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    local = {"local_files_only": True, "trust_remote_code": False}  # never the hub, no code
    return AutoModelForCausalLM.from_pretrained(
        model_dir, **local, attn_implementation="sdpa", dtype=torch.float32
    )


def apply_causal_lora(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """LoRA adapters (causal-LM task) on the layers ``lmforge.train.lora`` picks."""
    from peft import LoraConfig, TaskType, get_peft_model

    from lmforge.train.lora import lora_targets

    lora = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_targets(model, cfg),
    )
    return get_peft_model(model, lora)


def finetune_sft(
    cfg: Config,
    pretrained_dir: Path | None,
    augmented_dir: Path,
    out_dir: Path,
    *,
    on_log: Callable | None = None,
    log_weights: bool = True,
) -> SftFinetuneResult:
    """Instruction-tune the causal LM on the pairs; write ``out_dir`` (module doc)."""
    tcfg, out_dir = cfg.finetune, Path(out_dir)
    model_dir, tokenizer = starting_model(tcfg.base_model, pretrained_dir)
    template = chat_template(tcfg.chat_template, tokenizer)
    source = (
        "configured"
        if tcfg.chat_template
        else "plain"
        if template == PLAIN_TEMPLATE
        else "tokenizer"
    )
    tokenizer.chat_template = template  # saved with the model: evaluate and serving use it
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    pairs = load_pairs(cfg, augmented_dir)
    train = encode_pairs(tokenizer, template, pairs["train"], tcfg.max_length)
    val = encode_pairs(tokenizer, template, pairs["validation"], tcfg.max_length)
    weights = step.file_identity(model_dir / "config.json", model_dir / "model.safetensors")
    digest = hashlib.sha256(repr((train.ids, train.labels)).encode()).hexdigest()[:16]

    with step.process_group(tcfg) as rt:
        tcfg = budgeted(tcfg, len(train.ids), rt.world_size)  # max_steps: the run's steps
        tracking = step.tracked(cfg, "finetune", ("finetune",), out_dir, rt)
        with tracking as tracker:
            model = causal_lm(model_dir, tcfg.seed)
            task = SftTask(train, val, tcfg, rt, pad_id)
            base = _untuned_scores(model, task, tcfg, rt) if tcfg.baseline else {}
            if tcfg.method == "lora":
                model = apply_causal_lora(model, tcfg)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            total = sum(p.numel() for p in model.parameters())
            keeper = BestKeeper(monitored(cfg.finetune), tcfg.early_stopping_patience)
            run = fit(
                model,
                task,
                tcfg,
                rt,
                checkpoint_dir=step.checkpoint_dir(out_dir, "model"),
                fingerprint=step.fingerprint(tcfg, {"task": "sft", "weights": weights}, digest),
                on_log=step.both(tracker.step_logger(""), on_log),
                stopping=keeper,
            )
            # The best evaluation's weights (every rank agrees on whether there is one).
            state = keeper.state if keeper.best_step is not None else full_state_dict(run.model)
            last = kept_eval(run.history, keeper)
            result = SftFinetuneResult(
                task="sft",
                method=tcfg.method,
                steps=run.step,
                val_loss=last.get("val_loss", math.nan),
                val_perplexity=last.get("val_perplexity", math.nan),
                baseline_val_loss=base.get("val_loss"),
                baseline_val_perplexity=base.get("val_perplexity"),
                trainable_params=trainable,
                total_params=total,
                train_pairs=len(pairs["train"]),
                validation_pairs=len(pairs["validation"]),
                test_pairs=len(pairs["test"]),
                truncated_pairs=train.truncated,
                batching="length-bucketed padding",
                padding_efficiency=task.real_tokens / max(task.padded_tokens, 1),
                chat_template=source,
                model_dir=str(out_dir / "model"),
                resumed_from=run.resumed_from,
                precision=run.precision.name,
                precision_reason=run.precision.reason,
                budget_steps=tcfg.max_steps,
                epochs=round(steps_to_epochs(run.step, tcfg, len(train.ids), rt.world_size), 3),
                monitor=keeper.monitor,
                best_step=keeper.best_step,
                stop_reason=keeper.reason(run.step),
            )
            tracker.log_params(
                {
                    "task": "sft",
                    "precision": result.precision,
                    "monitor": result.monitor,
                    "stop_reason": result.stop_reason,
                }
            )
            if rt.is_main:
                _write_outputs(cfg, model_dir, tokenizer, state, run, pairs, result, out_dir)
                tracker.log_metrics(
                    {k: float(v) for k, v in asdict(result).items() if is_number(v)}
                )
                tracker.log_artifact(out_dir / "plots", "plots")
                _log_model(
                    cfg, tracker, tokenizer, template, pairs, run, keeper, out_dir, log_weights
                )
        if rt.is_main:  # again, now with what the tracker could not send
            step.write_metrics(out_dir, result, tracking.summary)
        barrier()
        return result


def _log_model(cfg, tracker, tokenizer, template, pairs, run, keeper, out_dir, weights) -> None:
    """The pairs trained and validated on (as written to ``pairs/``) as the run's inputs;
    ``model/`` as its LoggedModel with its best validation numbers and checkpoints."""
    from lmforge.model_logging import checkpoints
    from lmforge.train.sft import prompt_text

    splits = [
        input_dataset(out_dir / "pairs" / f"{split}.jsonl", f"sft-pairs-{split}", context)
        for split, context in (("train", "training"), ("validation", "validation"))
    ]
    tracker.log_inputs(splits)
    held_out = pairs["validation"][0]
    best = kept_eval(run.history, keeper)
    tracker.log_model(
        {
            "name": lineage.SFT_MODEL,
            "path": "model",
            "task": "text-generation",
            "step": keeper.best_step or run.step,
            "metrics": {k: float(v) for k, v in best.items() if k.startswith("val_")},
            "dataset": {"name": splits[1]["name"], "digest": splits[1]["digest"]},
            "example": [prompt_text(tokenizer, template, held_out.prompt)],
            "output_example": [held_out.response],
            "params": {"max_new_tokens": cfg.evaluate.sft_max_new_tokens, "do_sample": False},
            "tags": {"lmforge.stage": "finetune", "lmforge.task": "sft"},
            "weights": weights,
            "checkpoints": checkpoints(step.checkpoint_dir(out_dir, "model"), run.history, out_dir),
        }
    )


def _untuned_scores(model: nn.Module, task: SftTask, tcfg: FinetuneConfig, rt) -> dict:
    """The starting model's validation numbers: what fine-tuning has to beat."""
    model.to(rt.device).eval()
    with torch.no_grad(), autocast(tcfg, rt.device):
        scores = task.evaluate(model)
    model.train()
    return scores


def _write_outputs(cfg, model_dir, tokenizer, state, run, pairs, result, out_dir: Path) -> None:
    """model/, baseline/, pairs/, plots/ each appear whole (temp name, then rename)."""
    from lmforge.train.loss_csv import write_loss_csv

    tcfg = cfg.finetune
    with atomic_output_dir(out_dir / "model") as tmp:
        model = causal_lm(model_dir, 0)
        if tcfg.method == "lora":
            adapted = apply_causal_lora(model, tcfg)
            adapted.load_state_dict(state)
            model = adapted.merge_and_unload()  # a plain HF causal LM: no peft needed
        else:
            model.load_state_dict(state)
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    if tcfg.baseline:
        with atomic_output_dir(out_dir / "baseline") as tmp:
            _link_weights(Path(model_dir), tmp)
            tokenizer.save_pretrained(tmp)
    else:  # a baseline of an earlier run would be mistaken for this one's
        shutil.rmtree(out_dir / "baseline", ignore_errors=True)
    with atomic_output_dir(out_dir / "pairs") as tmp:
        for split, split_pairs in pairs.items():
            write_pairs(tmp / f"{split}.jsonl", split_pairs)
    with atomic_output_dir(out_dir / "plots") as plots:
        write_loss_csv(plots / "loss.csv", {"model": run})
    step.write_metrics(out_dir, result, {})


def _link_weights(src: Path, dst: Path) -> None:
    """The weights and model config of ``src`` in ``dst``: hard links (never written through:
    the tokenizer is saved fresh), else copies."""
    for path in sorted(src.iterdir()):
        if path.is_file() and (path.name in WEIGHT_FILES or path.suffix == ".safetensors"):
            try:
                os.link(path, dst / path.name)
            except OSError:
                shutil.copy2(path, dst / path.name)
