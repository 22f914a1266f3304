"""The finetune step: transfer learning from the pretrained decoder to the labelled task.

``finetune(cfg, pretrained_dir, augmented_dir, out_dir)`` puts a sequence-classification head on
the pretrained decoder (Hugging Face's ``*ForSequenceClassification``: a linear head on the last
non-pad token, i.e. last-token pooling) and trains it with the one training loop
(``lmforge.train.loop.fit``) — full fine-tuning or LoRA (``peft``) as ``finetune.method`` says.
A baseline of the same architecture from random weights gets the same budget (same steps, batch,
schedule and data order), so the gain of pretraining is measured, not assumed. Output folder:

- ``model/``: the fine-tuned classifier (HF dir, LoRA merged in) with the tokenizer;
- ``baseline/``: the from-scratch classifier, same layout;
- ``metrics.json``: validation accuracy / macro-F1 / loss of both, steps, parameters trained;
- ``plots/loss.csv``: step, train_loss, val_loss, baseline_train_loss, baseline_val_loss.

It runs as one process or as one rank of many (``finetune.parallel``), like pretraining.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmforge.config import Config, FinetuneConfig
from lmforge.errors import DataError
from lmforge.metrics import macro_f1
from lmforge.outputs import atomic_output_dir
from lmforge.train.data import GlobalBatchSampler
from lmforge.train.distributed import Runtime, all_reduce_sum, barrier, init_distributed, shutdown
from lmforge.train.loop import FitResult, fit
from lmforge.train.parallel import full_state_dict


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


# --------------------------------------------------------------------------------------------
# Data: labelled jsonl -> token ids
# --------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    ids: list[list[int]]
    labels: np.ndarray


def read_labelled(path: Path, labels: list[str]) -> list[dict]:
    """Records ``{"id", "text", "label"}`` of one split; unknown labels are an error."""
    if not path.is_file():
        raise DataError(f"{path}: missing labelled split; run the augment stage first")
    rows = []
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text, label = row["text"], row["label"]
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{path}:{n}: expected a JSON record with text and label") from None
            if label not in labels:
                raise DataError(
                    f"{path}:{n}: label {label!r} is not one of data.labels {labels}; "
                    "fix the record or add the label to params.yaml"
                )
            rows.append({"text": str(text), "label": label})
    if not rows:
        raise DataError(f"{path}: no records")
    return rows


def with_eos_appended(tokenizer):
    """Make ``tokenizer`` append EOS to every text, in its saved ``tokenizer.json`` too, so that
    training, ``evaluate`` and the served MLflow pipeline all end an example with EOS: the token
    the head pools (the last non-pad one)."""
    from tokenizers.processors import TemplateProcessing

    eos, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    if eos is not None and eos_id is not None:
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, eos_id)]
        )
    return tokenizer


def encode(rows: list[dict], tokenizer, labels: list[str], max_length: int) -> Encoded:
    """Token ids as the served pipeline tokenizes them (EOS appended by ``with_eos_appended``),
    the text truncated so that the whole example fits in ``max_length``."""
    texts = [r["text"] for r in rows]
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return Encoded(ids, np.array([labels.index(r["label"]) for r in rows], dtype=np.int64))


def collate(ids: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded input ids and attention mask (the head pools the last non-pad token)."""
    width = max(len(s) for s in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, seq in enumerate(ids):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


# --------------------------------------------------------------------------------------------
# The Task the loop trains
# --------------------------------------------------------------------------------------------


class ClassifyTask:
    """Sequence classification of the labelled records (a ``lmforge.train.loop.Task``)."""

    def __init__(self, train: Encoded, val: Encoded, cfg: FinetuneConfig, rt: Runtime, pad_id: int):
        self.train, self.val, self.rt, self.pad_id = train, val, rt, pad_id
        self.micro = cfg.micro_batch_size
        self.sampler = GlobalBatchSampler(
            len(train.ids), cfg.micro_batch_size, cfg.grad_accum_steps, rt.world_size, cfg.seed
        )
        n_val = min(len(val.ids), max(1, cfg.eval_batches) * cfg.micro_batch_size * rt.world_size)
        n_val -= n_val % rt.world_size  # equal forward passes per rank (FSDP gathers in each)
        self.val_ids = np.arange(n_val)[rt.rank :: rt.world_size]
        self.n_classes = int(max(train.labels.max(), val.labels.max())) + 1

    def _batch(self, data: Encoded, idx: np.ndarray) -> dict[str, torch.Tensor]:
        batch = collate([data.ids[i] for i in idx], self.pad_id, self.rt.device)
        batch["labels"] = torch.from_numpy(data.labels[idx]).to(self.rt.device)
        return batch

    def batch(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        return self._batch(self.train, self.sampler.indices(step, micro, self.rt.rank))

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        confusion = np.zeros((self.n_classes, self.n_classes))
        loss_sum = 0.0
        for start in range(0, len(self.val_ids), self.micro):
            batch = self._batch(self.val, self.val_ids[start : start + self.micro])
            out = model(**batch)
            loss_sum += float(out.loss) * len(batch["labels"])
            pred = out.logits.argmax(-1).cpu().numpy()
            np.add.at(confusion, (batch["labels"].cpu().numpy(), pred), 1)
        reduced = all_reduce_sum([loss_sum, *confusion.ravel().tolist()], self.rt.device)
        confusion = np.array(reduced[1:]).reshape(confusion.shape)
        n = max(confusion.sum(), 1.0)
        return {
            "val_loss": float(reduced[0] / n),
            "val_accuracy": float(np.trace(confusion) / n),
            "val_macro_f1": macro_f1(confusion),
        }


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def label_maps(labels: list[str]) -> dict:
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def build_classifier(model_dir: Path, labels: list[str], pretrained: bool, seed: int):
    """The pretrained decoder with a fresh head, or (``pretrained=False``) the same architecture
    from random weights: the baseline."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(seed)  # the head (and the baseline) start identically on every rank
    if pretrained:
        return AutoModelForSequenceClassification.from_pretrained(
            model_dir, **label_maps(labels), attn_implementation="sdpa"
        )
    config = AutoConfig.from_pretrained(model_dir, **label_maps(labels))
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")


def apply_lora(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """LoRA adapters on the attention projections; the classification head trains fully."""
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
    )
    return get_peft_model(model, lora)


def count_params(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------


def finetune(
    cfg: Config, pretrained_dir: Path, augmented_dir: Path, out_dir: Path
) -> FinetuneResult:
    """Fine-tune the classifier and its from-scratch baseline; write ``out_dir`` (module doc)."""
    from transformers import AutoTokenizer

    tcfg, labels = cfg.finetune, list(cfg.data.labels)
    model_dir = Path(pretrained_dir) / "model"
    if not (model_dir / "config.json").is_file():
        raise DataError(f"{model_dir}: no pretrained model (config.json); run pretrain first")
    tokenizer = with_eos_appended(AutoTokenizer.from_pretrained(model_dir))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    labelled = Path(augmented_dir) / "labelled"
    train = encode(read_labelled(labelled / "train.jsonl", labels), tokenizer, labels, tcfg.max_length)  # fmt: skip
    val = encode(read_labelled(labelled / "validation.jsonl", labels), tokenizer, labels, tcfg.max_length)  # fmt: skip

    # Checkpoints (for resuming a crashed run) live beside the output, which is replaced whole.
    ckpt_root = Path(out_dir).parent / f".{Path(out_dir).name}-checkpoints"
    rt = init_distributed(tcfg.device, tcfg.num_threads)
    try:
        with _tracking(cfg, rt) as run:
            runs: dict[str, FitResult] = {}
            states: dict[str, dict] = {}
            variants = ["model", "baseline"] if tcfg.baseline else ["model"]
            for variant in variants:
                model = build_classifier(model_dir, labels, variant == "model", tcfg.seed)
                if tcfg.method == "lora" and variant == "model":
                    model = apply_lora(model, tcfg)
                if variant == "model":
                    trainable, total = count_params(model)
                task = ClassifyTask(train, val, tcfg, rt, pad_id)
                runs[variant] = fit(
                    model,
                    task,
                    tcfg,
                    rt,
                    checkpoint_dir=ckpt_root / variant,
                    fingerprint=f"{variant}-{fingerprint(cfg, model_dir, labelled)}",
                    on_log=_mlflow_logger(variant) if run is not None else None,
                )
                states[variant] = full_state_dict(runs[variant].model)
            result = _result(tcfg, runs, trainable, total, len(train.ids), out_dir)
            if rt.is_main:
                _write_outputs(cfg, model_dir, tokenizer, states, runs, result, Path(out_dir))
                if run is not None:
                    import mlflow

                    mlflow.log_metrics(
                        {k: float(v) for k, v in asdict(result).items() if _is_number(v)}
                    )
                    mlflow.log_artifacts(str(Path(out_dir) / "plots"), "plots")
        barrier()
        if rt.is_main:
            shutil.rmtree(ckpt_root, ignore_errors=True)
        return result
    finally:
        shutdown()


def fingerprint(cfg: Config, model_dir: Path, labelled: Path) -> str:
    """What makes a checkpoint resumable: the config, the pretrained weights, the training data."""
    digest = hashlib.sha256(cfg.params_hash().encode())
    for path in (model_dir / "model.safetensors", labelled / "train.jsonl"):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _last_eval(fit_result: FitResult) -> dict[str, float]:
    evals = [r for r in fit_result.history if "val_loss" in r]
    return evals[-1] if evals else {}


def _result(tcfg, runs, trainable, total, n_train, out_dir) -> FinetuneResult:
    main, base = _last_eval(runs["model"]), _last_eval(runs["baseline"]) if "baseline" in runs else {}  # fmt: skip
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
    )


def _tracking(cfg: Config, rt: Runtime):
    if not rt.is_main:
        return contextlib.nullcontext()
    from lmforge.tracking import stage_run

    return stage_run(cfg, "finetune", sections=("finetune",))


def _mlflow_logger(variant: str):
    import mlflow

    prefix = "" if variant == "model" else "baseline_"

    def log_row(step: int, row: dict[str, float]) -> None:
        mlflow.log_metrics({prefix + k: float(v) for k, v in row.items()}, step=step)

    return log_row


def _write_outputs(cfg, model_dir, tokenizer, states, runs, result, out_dir: Path) -> None:
    labels = list(cfg.data.labels)
    with atomic_output_dir(out_dir) as tmp:
        for variant, state in states.items():
            model = build_classifier(model_dir, labels, pretrained=False, seed=0)
            if cfg.finetune.method == "lora" and variant == "model":
                model = apply_lora(model, cfg.finetune)
                model.load_state_dict(state)
                model = model.merge_and_unload()  # a plain HF classifier: no peft at load time
            else:
                model.load_state_dict(state)
            model.config.pad_token_id = tokenizer.pad_token_id
            model.save_pretrained(tmp / variant, safe_serialization=True)
            tokenizer.save_pretrained(tmp / variant)
        (tmp / "plots").mkdir()
        _write_loss_csv(tmp / "plots" / "loss.csv", runs)
        (tmp / "metrics.json").write_text(json.dumps(asdict(result), indent=2) + "\n")


def _write_loss_csv(path: Path, runs: dict[str, FitResult]) -> None:
    columns = ["train_loss", "val_loss"]
    rows: dict[int, dict[str, float]] = {}
    for variant, fit_result in runs.items():
        prefix = "" if variant == "model" else "baseline_"
        for row in fit_result.history:
            for key in columns:
                if key in row:
                    rows.setdefault(int(row["step"]), {})[prefix + key] = row[key]
    header = ["step", *columns, *(f"baseline_{c}" for c in columns if "baseline" in runs)]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for step in sorted(rows):
            values = rows[step]
            writer.writerow(
                [step, *("" if values.get(k) is None else f"{values[k]:.5f}" for k in header[1:])]
            )
