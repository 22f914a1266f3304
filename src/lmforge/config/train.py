"""Config of the training loop (``pretrain``, ``finetune``): one loop, two uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmforge.config.schema import Section, setting


@dataclass
class TrainConfig(Section):
    """The training loop's knobs, shared by pretraining and fine-tuning."""

    seed: int = setting(1337, "Seed of the weights, the data order and dropout.")
    max_steps: int = setting(300, "Optimizer steps.", ge=1)
    micro_batch_size: int = setting(8, "Sequences per rank per micro step.", ge=1)
    grad_accum_steps: int = setting(1, "Micro steps accumulated per optimizer step.", ge=1)
    lr: float = setting(1e-3, "Peak learning rate (AdamW).", gt=0, le=1)
    min_lr_ratio: float = setting(0.1, "The cosine decays to lr * min_lr_ratio.", ge=0, le=1)
    warmup_steps: int = setting(30, "Linear warmup from 0 to lr over this many steps.", ge=0)
    weight_decay: float = setting(0.1, "Decoupled weight decay, on matrices only.", ge=0)
    beta1: float = setting(0.9, "AdamW first-moment decay.", ge=0, lt=1)
    beta2: float = setting(0.95, "AdamW second-moment decay.", ge=0, lt=1)
    grad_clip: float = setting(1.0, "Clip the global gradient norm to this; 0: no clipping.", ge=0)
    precision: Literal["auto", "fp32", "bf16"] = setting(
        "auto",
        "auto: bf16 where the device computes it natively (CUDA with bf16, a CPU with "
        "AVX512-BF16 or AMX), else fp32. An explicit bf16 elsewhere runs, with a warning.",
    )
    compile: bool = setting(False, "torch.compile the model (pays back on long runs).")
    parallel: Literal["single", "ddp", "fsdp"] = setting(
        "ddp", "Data parallelism across ranks: single process, DDP or FSDP2 (sharded)."
    )
    activation_checkpointing: bool = setting(
        False, "Recompute each block's activations in backward: less memory, more compute."
    )
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "auto: CUDA when present, else CPU.")
    eval_every: int = setting(
        100, "Validate every this many steps (and at the end); 0: at the end.", ge=0
    )
    eval_batches: int = setting(20, "Validation batches per rank per evaluation.", ge=1)
    log_every: int = setting(10, "Log the training loss every this many steps.", ge=1)
    ckpt_every: int = setting(
        100, "Checkpoint every this many steps (and at the end); 0: never.", ge=0
    )
    keep_last: int = setting(2, "Verified checkpoints kept; the newest is never removed.", ge=1)
    num_threads: int = setting(
        0, "torch intra-op threads per rank; 0: the cores this process may use / local ranks.", ge=0
    )


@dataclass
class PretrainConfig(TrainConfig):
    """Pretraining of the decoder on the packed corpus blocks."""

    name = "pretrain"

    # The shipped run's budget and rate (params.yaml, docs/benchmarks/default_run.md): one
    # default everywhere, whether a key is written in params.yaml or left out.
    max_steps: int = setting(560, "Optimizer steps.", ge=1)
    lr: float = setting(2e-3, "Peak learning rate (AdamW).", gt=0, le=1)
    warmup_steps: int = setting(56, "Linear warmup from 0 to lr over this many steps.", ge=0)
    eval_every: int = setting(
        280, "Validate every this many steps (and at the end); 0: at the end.", ge=0
    )
    ckpt_every: int = setting(
        280, "Checkpoint every this many steps (and at the end); 0: never.", ge=0
    )
    init_from: str | None = setting(
        None,
        "A local Hugging Face causal-LM folder (config.json, weights, tokenizer) to continue "
        "pretraining from: tokenize then encodes with its tokenizer instead of training one, and "
        "the model section's shape is ignored. Null: a new decoder from the model section.",
    )

    def check(self) -> None:
        if self.init_from is not None and not self.init_from.strip():
            self.fail("init_from", "empty path; set a model folder or null")


@dataclass
class FinetuneConfig(TrainConfig):
    """Transfer learning on the labelled set: a classification head on the pretrained decoder."""

    name = "finetune"

    method: Literal["full", "lora"] = setting(
        "full", "full: every weight trains; lora: low-rank adapters, merged before saving."
    )
    lora_r: int = setting(8, "LoRA rank.", ge=1)
    lora_alpha: int = setting(16, "LoRA scaling numerator (scale = alpha / r).", ge=1)
    lora_dropout: float = setting(0.05, "Dropout on the LoRA input.", ge=0, lt=1)
    lora_target_modules: list[str] = setting(
        [],
        "Layers that get LoRA adapters (names as in the model); empty: the attention "
        "projections found in the model (q/k/v/o_proj on Llama and Qwen2, c_attn and c_proj "
        "on GPT-2).",
    )
    max_length: int = setting(128, "Tokens per example, truncated.", ge=2)
    baseline: bool = setting(True, "Also train from scratch with the same budget, to compare.")
    base_model: str | None = setting(
        None,
        "A local Hugging Face causal-LM folder (config.json, weights, tokenizer) to fine-tune "
        "from directly, with its own tokenizer, instead of the pretrain stage's model. Null: the "
        "pretrain output.",
    )
    parallel: Literal["single", "ddp", "fsdp"] = setting(
        "single", "Data parallelism across ranks: single process, DDP or FSDP2 (sharded)."
    )
    max_epochs: float = setting(
        3.0,
        "The budget in passes over the training split: ceil(max_epochs x training records / "
        "global batch) optimizer steps, capped by max_steps; 0: max_steps alone. Early stopping "
        "usually ends the run before (docs/finetune.md).",
        ge=0,
        le=1000,
    )
    max_steps: int = setting(
        0,
        "A cap on the optimizer steps of max_epochs (the budget itself with max_epochs 0); "
        "0: none.",
        ge=0,
    )
    early_stopping_patience: int = setting(
        3,
        "Stop after this many evaluations (every eval_every steps) without improvement of "
        "monitor; the model and baseline written are each run's best evaluation, not its last. "
        "0: train the whole budget (the best is still what is written).",
        ge=0,
    )
    monitor: Literal["auto", "val_macro_f1", "val_accuracy", "val_loss"] = setting(
        "auto",
        "What early stopping and the best checkpoint go by; auto: val_macro_f1 (higher is better) "
        "for classification, val_loss (lower is better) for sft.",
    )
    lr: float = setting(2e-3, "Peak learning rate (AdamW).", gt=0, le=1)
    warmup_steps: int = setting(6, "Linear warmup from 0 to lr over this many steps.", ge=0)
    eval_every: int = setting(
        30,
        "Validate every this many steps (and at the end); 0: at the end only, which leaves "
        "early stopping nothing to compare.",
        ge=0,
    )
    task: Literal["classification", "sft"] = setting(
        "classification",
        "classification: a label head on the decoder (data.labels); sft: instruction tuning of "
        "the causal LM on prompt/response pairs, loss on the response tokens only (docs/sft.md); "
        "baseline then keeps the untuned model beside it, to compare.",
    )
    sft_data: str = setting(
        "",
        "sft: the pairs, a .jsonl/.csv/.parquet file (split by a hash of the prompt) or a folder "
        "of train/validation/test files; empty: subject lines of the labelled emails.",
    )
    sft_holdout_share: float = setting(
        0.1, "sft: share of a single pairs file held out, half validation, half test.", gt=0, lt=1
    )
    prompt_field: str = setting("prompt", "sft: the column holding the prompt.")
    response_field: str = setting("response", "sft: the column holding the response.")
    chat_template: str = setting(
        "",
        "sft: a Jinja chat template (messages: user = prompt, assistant = response); empty: the "
        "tokenizer's own if it has one, else the prompt, a newline, the response and EOS.",
    )

    def check(self) -> None:
        if self.prompt_field == self.response_field:
            self.fail("response_field", "must differ from finetune.prompt_field")
        if self.base_model is not None and not self.base_model.strip():
            self.fail("base_model", "empty path; set a model folder or null")
        if self.max_epochs == 0 and self.max_steps == 0:
            self.fail("max_epochs", "0 with max_steps 0 leaves no budget; set either above 0")
        if self.task == "sft" and self.monitor in ("val_macro_f1", "val_accuracy"):
            self.fail("monitor", "sft reports val_loss and val_perplexity; use val_loss or auto")
