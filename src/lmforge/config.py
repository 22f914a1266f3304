"""One typed configuration for every stage, loaded from DVC's ``params.yaml``.

Each stage reads its own section (a dataclass below). ``load_config`` builds the whole tree,
checking every key and type, then applies ``--set section.key=value`` overrides. Model sizes come
from presets (``src/lmforge/presets/models.yaml``), never from code: ``model.preset`` selects one
and any key written next to it in ``params.yaml`` overrides the preset's value.

Only the standard library and PyYAML are imported here: the CLI loads the config on every call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

PRESETS_FILE = Path(__file__).parent / "presets" / "models.yaml"


from lmforge.errors import ConfigError  # noqa: E402  (re-exported: one error family)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Raw data layout (under the DVC-tracked ``data/``), validation bounds and the split."""

    corpus_glob: str = "corpus/*.jsonl"  # pretraining text: records {id, source, genre, text}
    labelled_file: str = "labelled/spam.jsonl"  # downstream set: records {id, text, label}
    labels: list[str] = field(default_factory=lambda: ["ham", "spam"])
    min_chars: int = 1
    max_chars: int = 200_000
    min_alpha_share: float = 0.5  # letters / non-space characters, per record
    max_duplicate_share: float = 0.05  # share of records whose text repeats another's
    min_class_share: float = 0.3  # each label's share of the labelled set
    max_file_mb: float = 100.0  # refuse larger raw files up front
    max_line_mb: float = 4.0  # one record per line: a longer line is refused while reading
    split_salt: str = "lmforge-v1"
    validation_share: float = 0.05
    test_share: float = 0.05
    failed_examples: int = 3  # offending records quoted per failed expectation


@dataclass
class AugmentConfig:
    """Seeded text augmentation of the training split only (EDA-style operations)."""

    seed: int = 1234
    share: float = 0.3  # fraction of training records that get one augmented copy
    p_random_deletion: float = 0.1
    p_random_swap: float = 0.1
    p_random_insertion: float = 0.1
    p_char_noise: float = 0.02
    p_sentence_shuffle: float = 0.2
    augment_labelled: bool = True


@dataclass
class TokenizerConfig:
    """Byte-level BPE trained on the training split; packing into fixed-length blocks."""

    vocab_size: int = 4096
    min_frequency: int = 2
    special_tokens: list[str] = field(
        default_factory=lambda: ["<|endoftext|>", "<|pad|>", "<|unk|>"]
    )
    eos_token: str = "<|endoftext|>"
    pad_token: str = "<|pad|>"
    block_size: int = 256  # tokens per packed block (the model's context length)
    num_proc: int = 2  # datasets.map workers
    batch_size: int = 1000
    # BPE merges settle long before the whole corpus is seen: train on a hash-sampled share of
    # about this many MB of the training split (0: all of it), so the stage scales with encoding.
    train_max_mb: float = 8.0
    # The labelled records' texts (labels dropped) join the language-model text of their own
    # split: the decoder (and the tokenizer) learn the downstream domain before fine-tuning,
    # i.e. domain-adaptive pretraining. Only the train split is trained on, as for the corpus.
    include_labelled_text: bool = True


@dataclass
class ModelConfig:
    """A Llama-style decoder (RMSNorm, RoPE, SwiGLU, SDPA). ``preset`` fills the shape."""

    preset: str = "cpu-tiny"
    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: multi-head attention; fewer: grouped-query attention
    d_ff: int | None = None  # None: the SwiGLU default of about 8/3 * d_model, rounded
    max_seq_len: int = 256
    vocab_size: int | None = None  # None: taken from the trained tokenizer
    rope_theta: float = 10000.0
    sliding_window: int | None = None  # local attention window in tokens; None: global
    dropout: float = 0.0
    tie_embeddings: bool = True
    init_std: float = 0.02


@dataclass
class TrainConfig:
    """The training loop's knobs, shared by pretraining and fine-tuning (one loop, two uses)."""

    seed: int = 1337
    max_steps: int = 300
    micro_batch_size: int = 8  # sequences per rank per micro step
    grad_accum_steps: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 30
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # auto: bf16 where the device computes it natively (CUDA with bf16, a CPU with AVX512-BF16
    # or AMX), else fp32. An explicit bf16 on a device without native support still runs.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    parallel: Literal["single", "ddp", "fsdp"] = "ddp"
    activation_checkpointing: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_every: int = 100
    eval_batches: int = 20
    log_every: int = 10
    ckpt_every: int = 100
    keep_last: int = 2
    num_threads: int = 0  # torch intra-op threads per rank; 0 = cores / local ranks


@dataclass
class PretrainConfig(TrainConfig):
    """Pretraining of the decoder on the packed corpus blocks."""


@dataclass
class FinetuneConfig(TrainConfig):
    """Transfer learning on the labelled set: a classification head on the pretrained decoder."""

    method: Literal["full", "lora"] = "full"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    max_length: int = 128  # tokens per example, truncated
    baseline: bool = True  # also train from scratch with the same budget
    parallel: Literal["single", "ddp", "fsdp"] = "single"
    max_steps: int = 60  # short budget: where pretraining beats the from-scratch baseline
    lr: float = 1e-3
    warmup_steps: int = 6
    eval_every: int = 30


@dataclass
class EvaluateConfig:
    """Held-out evaluation: perplexity, accuracy, macro-F1, samples; the gate is ``register``'s."""

    max_perplexity_batches: int = 50
    batch_size: int = 16  # sequences per forward pass (perplexity and classification)
    sample_prompts: list[str] = field(
        default_factory=lambda: ["The king", "In the beginning", "She said that"]
    )
    sample_max_new_tokens: int = 40
    sample_temperature: float = 0.8
    sample_seed: int = 0
    compare_champion: bool = True  # load models:/NAME@champion and score it on the same split


@dataclass
class RegisterConfig:
    """MLflow model registration and the promotion gate."""

    lm_model_name: str = "lmforge-lm"
    classifier_model_name: str = "lmforge-classifier"
    challenger_alias: str = "challenger"
    champion_alias: str = "champion"
    previous_alias: str = "previous"
    # The gate of the classifier (higher is better) ...
    primary_metric: str = "macro_f1"
    min_primary: float = 0.6  # absolute threshold the challenger must reach
    # ... and of the language model (lower is better).
    lm_primary_metric: str = "perplexity"
    lm_max_primary: float = 1000.0
    promote_margin: float = 0.0  # the challenger must beat the champion by more than this
    lock_timeout_s: float = 60.0  # wait this long for a concurrent promotion to finish
    lock_lease_s: float = 300.0  # a lock older than this is a dead holder's: taken over


@dataclass
class TrackingConfig:
    """Where MLflow runs go. ``MLFLOW_TRACKING_URI`` wins; else the embedded store in the repo."""

    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_location: str = "mlartifacts"
    experiment: str = "lmforge"
    # Training path: a tracking outage must not kill training. Each request gets this timeout
    # and at most this many retries; what could not be sent is buffered and replayed.
    request_timeout_s: float = 5.0
    max_retries: int = 1
    # Stages that need the server (register, promote): give up after this long, naming the URI.
    connect_timeout_s: float = 15.0


@dataclass
class LaunchConfig:
    """How pretraining is launched: a Kubeflow PyTorchJob, on a cluster or on local processes."""

    backend: Literal["local", "kubernetes", "inline"] = "local"
    job_name: str = "lmforge-pretrain"
    namespace: str = "lmforge"
    image: str = "ghcr.io/lmforge/lmforge:0.1.0"
    nnodes: int = 2  # Master + (nnodes - 1) Workers
    nproc_per_node: int = 1  # processes per pod (= GPUs per node on GPU pools)
    gpus_per_node: int = 0
    elastic_min_nodes: int | None = None  # set both for an elastic policy
    elastic_max_nodes: int | None = None
    restart_policy: Literal["OnFailure", "Never", "Always", "ExitCode"] = "OnFailure"
    backoff_limit: int = 3
    cpu: str = "1"
    memory: str = "4Gi"
    shm_size: str = "2Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, str]] = field(default_factory=list)
    pvc_name: str = "lmforge-work"
    mount_path: str = "/mnt/lmforge"
    service_account: str = "lmforge-launcher"
    timeout_s: int = 6 * 3600
    delete_on_finish: bool = True
    nccl_debug: str = "WARN"
    master_port: int = 23456  # the container port named pytorchjob-port (local runner: a free one)
    # Local runner: when a replica dies, its peers' collectives break; a peer that stays silent
    # (no log line) this long is stopped and restarted too, as a cluster's NCCL timeout would.
    peer_timeout_s: int = 120
    poll_s: float = 5.0  # Kubernetes backend: seconds between job status reads


@dataclass
class KubeflowConfig:
    """Kubeflow Pipelines: image, caching, GPU scheduling, submission."""

    image: str = "ghcr.io/lmforge/lmforge:0.1.0"
    host: str = ""
    namespace: str = "kubeflow"
    experiment: str = "lmforge"
    pipeline_prefix: str = "lmforge"
    cache_heavy_steps: bool = False
    gpu_node_selector: dict[str, str] = field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"}
    )
    gpu_toleration_key: str = "nvidia.com/gpu"
    gpu_steps: list[str] = field(default_factory=lambda: ["finetune", "evaluate"])
    gpus_per_step: int = 1
    # The secret's keys become the env of every step (MLflow server and credentials).
    mlflow_secret: str = "lmforge-mlflow"
    mlflow_secret_keys: list[str] = field(
        default_factory=lambda: [
            "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
        ]
    )  # fmt: skip
    # Pipeline inputs as artifact URIs: the DVC-tracked raw data; for the finetune pipeline,
    # a pretrain pipeline's outputs (its Model and tokenized Dataset).
    data_uri: str = "minio://mlpipeline/lmforge/data"
    pretrained_uri: str = "minio://mlpipeline/lmforge/pretrain"
    tokenized_uri: str = "minio://mlpipeline/lmforge/tokenized"
    pretrain_backend: Literal["kubernetes", "local"] = "kubernetes"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    kubeflow: KubeflowConfig = field(default_factory=KubeflowConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def params_hash(self) -> str:
        """A short, stable hash of every value: the lineage tag of a run and a model version."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(f"{where}: expected one of {choices}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = args or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_tp, val_tp = args or (Any, Any)
        return {
            _coerce(k, key_tp, where): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected str, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


def _build(cls: type, values: Any, where: str) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}: unknown key; valid keys of {where} are: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def load_presets() -> dict[str, dict[str, Any]]:
    with PRESETS_FILE.open() as fh:
        return yaml.safe_load(fh)


def _apply_preset(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Fill the model section from its preset; keys written in params.yaml win over the preset."""
    model = dict(raw.get("model") or {})
    preset_name = model.get("preset", ModelConfig.preset)
    presets = load_presets()
    if preset_name not in presets:
        raise ConfigError(
            f"{source}: model.preset: unknown preset {preset_name!r}; "
            f"choose one of {', '.join(presets)} (defined in {PRESETS_FILE.name})"
        )
    merged = {**presets[preset_name], **model, "preset": preset_name}
    return {**raw, "model": merged}


def parse_override(item: str) -> tuple[list[str], Any]:
    """``pretrain.lr=3e-4`` -> (["pretrain", "lr"], 3e-4); the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. pretrain.lr=3e-4")
    key, _, text = item.partition("=")
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. pretrain.lr=3e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    # YAML reads 3e-4 as a string (it wants 3.0e-4); accept the usual float spellings.
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value) if any(c in value for c in ".eE") else value
    return path, value


def load_config(
    params: str | Path | None = "params.yaml",
    overrides: list[str] | tuple[str, ...] = (),
) -> Config:
    """Read ``params`` (missing file: the embedded defaults), apply overrides, validate it all."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if params is not None:
        path = Path(params)
        source = str(path)
        if path.exists():
            try:
                raw = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
            if not isinstance(raw, dict):
                raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        elif Path(params) != Path("params.yaml"):
            raise ConfigError(f"{path}: params file not found")
    return _config_from_raw(raw, overrides, source)


def load_config_text(
    text: str, overrides: list[str] | tuple[str, ...] = (), source: str = "params (text)"
) -> Config:
    """Like ``load_config`` for params YAML held in a string (a KFP pipeline parameter)."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    return _config_from_raw(raw, overrides, source)


def _config_from_raw(
    raw: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str
) -> Config:
    raw = json.loads(json.dumps(raw))  # deep copy, plain types
    for item in overrides:
        keys, value = parse_override(item)
        node = raw
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: {key} is not a section")
        node[keys[-1]] = value
    raw = _apply_preset(raw, source)
    try:
        return _build(Config, raw, "params")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}".replace(": params.", ": ")) from None


def section_of(cfg: Config, name: str) -> Any:
    return getattr(cfg, name)
