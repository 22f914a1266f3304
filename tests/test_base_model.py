"""A user's Hugging Face causal LM as the start: continued pretraining (``pretrain.init_from``),
a classifier straight from it (``finetune.base_model``), LoRA per architecture, bad folders.

The models are tiny random Llama, Qwen2 and GPT-2 folders the tests save (``hf_fixtures``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_fixtures import ARCHS
from mlflow_fixtures import _store_env, tiny_config
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from lmforge.config import load_config
from lmforge.errors import DataError, TrainingError
from lmforge.model.base import load_base
from lmforge.train.finetune import build_classifier, finetune
from lmforge.train.lora import apply_lora

PRETRAIN = [
    "tokenizer.block_size=32",
    "tokenizer.num_proc=1",
    "pretrain.max_steps=4",
    "pretrain.micro_batch_size=4",
    "pretrain.warmup_steps=1",
    "pretrain.lr=0.01",
    "pretrain.log_every=2",
    "pretrain.eval_every=0",
    "pretrain.eval_batches=2",
    "pretrain.ckpt_every=0",
    "pretrain.precision=fp32",
    "pretrain.num_threads=1",
    "pretrain.parallel=single",
]


@pytest.fixture(scope="module")
def continued(hf_models, hf_augmented, tmp_path_factory, blank_store_db) -> dict[str, dict]:
    """tokenize + pretrain with ``pretrain.init_from`` for each architecture (one MLflow store)."""
    from lmforge.data.tokenize import tokenize
    from lmforge.train.pretrain import pretrain

    root = tmp_path_factory.mktemp("continued")
    shutil.copyfile(blank_store_db, root / "mlflow.db")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        _store_env(mp, f"sqlite:///{root / 'mlflow.db'}")
        for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            mp.delenv(var, raising=False)
        for arch in ARCHS:
            cfg = load_config(
                None,
                [
                    *PRETRAIN,
                    f"pretrain.init_from={hf_models[arch]}",
                    f"tracking.artifact_location={root / 'mlartifacts'}",
                ],
            )
            tokenize(cfg, hf_augmented, root / arch / "tokenized")
            result = pretrain(cfg, root / arch / "tokenized", root / arch / "pretrain")
            out[arch] = {
                "cfg": cfg,
                "result": result,
                "tokenized": root / arch / "tokenized",
                "pretrain": root / arch / "pretrain",
            }
    return out


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_continued_pretraining_keeps_the_models_architecture_and_tokenizer(
    arch, continued, hf_models, hf_augmented
):
    run = continued[arch]
    base_tok = AutoTokenizer.from_pretrained(hf_models[arch])
    # tokenize encoded with the model's own tokenizer, each record ending with its EOS
    meta = json.loads((run["tokenized"] / "blocks" / "meta.json").read_text())
    assert meta["tokenizer_from"] == str(hf_models[arch])
    assert meta["vocab_size"] == len(base_tok) and meta["eos_id"] == base_tok.eos_token_id
    used = AutoTokenizer.from_pretrained(run["tokenized"] / "tokenizer")
    assert used.get_vocab() == base_tok.get_vocab()
    ids = np.fromfile(run["tokenized"] / "blocks" / "train.bin", dtype=meta["dtype"])
    record = json.loads((hf_augmented / "corpus" / "train.jsonl").open().readline())["text"]
    expected = [*base_tok(record, add_special_tokens=False)["input_ids"], base_tok.eos_token_id]
    assert ids[: len(expected)].tolist() == expected[: len(ids)]
    # pretrain continued the same architecture from the given weights and kept its tokenizer
    model_dir = run["pretrain"] / "model"
    start = AutoModelForCausalLM.from_pretrained(hf_models[arch])
    trained = AutoModelForCausalLM.from_pretrained(model_dir)
    assert type(trained) is type(start)
    assert trained.config.vocab_size == start.config.vocab_size  # the padded embeddings kept
    assert AutoTokenizer.from_pretrained(model_dir).get_vocab() == base_tok.get_vocab()
    before, after = start.state_dict(), trained.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and set(before) == set(after)
    result = run["result"]
    assert result.steps == 4 and np.isfinite(result.val_loss)
    assert result.n_params == sum(p.numel() for p in start.parameters())


def test_blocks_of_another_tokenizer_are_refused(continued, hf_models, tmp_path, embedded_store):
    from lmforge.train.pretrain import pretrain

    cfg = load_config(None, [*PRETRAIN, f"pretrain.init_from={hf_models['qwen2']}"])
    with pytest.raises(DataError, match=r"encoded with .*llama.*re-run the tokenize stage"):
        pretrain(cfg, continued["llama"]["tokenized"], tmp_path / "out")
    assert not (tmp_path / "out" / "model").exists()


def test_a_conflicting_model_vocab_size_is_refused(continued, hf_models, tmp_path, embedded_store):
    from lmforge.train.pretrain import pretrain

    cfg = load_config(
        None, [*PRETRAIN, f"pretrain.init_from={hf_models['gpt2']}", "model.vocab_size=999"]
    )
    with pytest.raises(TrainingError, match=r"model\.vocab_size: 999 conflicts .* null"):
        pretrain(cfg, continued["gpt2"]["tokenized"], tmp_path / "out")


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_targets_the_attention_projections_and_trains_only_adapters_and_head(arch, hf_models):
    cfg = tiny_config("finetune.method=lora").finetune
    tok = load_base(hf_models[arch])[1]
    model = apply_lora(build_classifier(hf_models[arch], ["ham", "spam"], True, 0, 0), cfg)
    expected = {"gpt2": {"c_attn", "c_proj"}}.get(arch, {"q_proj", "k_proj", "v_proj", "o_proj"})
    assert set(model.peft_config["default"].target_modules) == expected
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or ".score." in n for n in trainable)
    assert any(".score." in n for n in trainable)
    assert tok.pad_token_id is not None  # GPT-2's tokenizer has none: EOS pads


@pytest.mark.parametrize("arch", ARCHS)
def test_fsdp_finds_the_decoder_blocks_of_each_architecture(arch, hf_models):
    from lmforge.train.parallel import decoder_blocks

    model = load_base(hf_models[arch])[0]
    blocks = decoder_blocks(model)
    assert len(blocks) == 2 and {type(b).__name__ for b in blocks} <= set(model._no_split_modules)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_lora_fine_tuning_from_base_model_merges_into_that_architecture(
    arch, hf_models, hf_augmented, embedded_store, tmp_path
):
    cfg = tiny_config(
        "finetune.method=lora",
        "finetune.baseline=false",
        "finetune.max_steps=3",
        "finetune.eval_every=0",
        "finetune.lr=0.05",
        f"finetune.base_model={hf_models[arch]}",
        f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
    )
    result = finetune(cfg, None, hf_augmented, tmp_path / "ft")  # no pretrain output at all
    assert 0 < result.trainable_params < result.total_params
    weights = load_file(tmp_path / "ft" / "model" / "model.safetensors")
    assert not any("lora" in k for k in weights)
    base = load_file(hf_models[arch] / "model.safetensors")
    attn, mlp = {
        "gpt2": ("transformer.h.0.attn.c_attn.weight", "transformer.h.0.mlp.c_fc.weight"),
    }.get(arch, ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight"))
    assert weights[attn].shape == base[attn].shape  # Conv1D merged untransposed
    assert not torch.equal(weights[attn], base[attn])  # the adapter was merged in
    assert torch.equal(weights[mlp], base[mlp])  # untargeted weights stay frozen
    clf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ft" / "model")
    assert clf.config.pad_token_id is not None and clf.config.model_type == arch


@pytest.mark.slow
def test_a_classifier_from_base_model_goes_through_evaluate_and_registers_with_its_tokenizer(
    continued, hf_models, hf_augmented, embedded_store, tmp_path
):
    """GPT-2 (no pad token, Conv1D, learned positions): continued pretraining gives the LM,
    ``finetune.base_model`` the classifier; evaluate and register take both; the registry's
    loading code gives back the classifier with the base model's tokenizer."""
    import mlflow

    from lmforge.evaluate import evaluate
    from lmforge.registry import register
    from lmforge.registry.loading import load_classifier_version

    run = continued["gpt2"]
    cfg = tiny_config(
        "finetune.max_steps=20",
        "finetune.lr=0.01",
        f"finetune.base_model={hf_models['gpt2']}",
        f"pretrain.init_from={hf_models['gpt2']}",  # the LM's run: without it, none is pretrained
        "evaluate.compare_champion=false",
        "register.min_primary=0.0",
        f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
    )
    finetune(cfg, None, hf_augmented, tmp_path / "ft")
    result = evaluate(
        cfg, run["pretrain"], tmp_path / "ft", run["tokenized"], hf_augmented, tmp_path / "ev"
    )
    assert result.passed and result.accuracy > result.majority_accuracy
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["lm"]["perplexity"] > 1 and report["samples"]
    registered = register(cfg, run["pretrain"], tmp_path / "ft", tmp_path / "ev", tmp_path / "rg")
    client = mlflow.MlflowClient()
    model, tokenizer = load_classifier_version(
        client, registered.classifier.name, registered.classifier.version
    )
    base_tok = AutoTokenizer.from_pretrained(hf_models["gpt2"])
    assert tokenizer.get_vocab() == base_tok.get_vocab()
    assert model.config.model_type == "gpt2" and model.config.pad_token_id == base_tok.eos_token_id
    batch = tokenizer(
        ["free cash prize now", "lunch meeting tomorrow"], return_tensors="pt", padding=True
    )
    assert model(**batch).logits.shape == (2, 2)


# ------------------------------------------------------------------------------ bad folders


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _no_config(d):
    (d / "config.json").unlink()


def _not_causal(d):
    config = json.loads((d / "config.json").read_text())
    classifier = {"architectures": ["LlamaForSequenceClassification"]}  # e.g. finetune's output
    (d / "config.json").write_text(json.dumps({**config, **classifier}))


def _no_tokenizer(d):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (d / name).unlink()


def _small_vocab(d):
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "vocab_size": 100}))


def _remote_code(d):
    config = json.loads((d / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_x.X"}
    (d / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (None, r"finetune\.base_model: .*nowhere is not a folder; set finetune\.base_model"),
        (_no_config, r"has no config\.json; set finetune\.base_model to a folder"),
        (
            _not_causal,
            r"is a 'llama' model, not a causal language model .*LlamaForSequenceClassification",
        ),
        (_no_tokenizer, r"has no tokenizer .*tokenizer\.save_pretrained"),
        (_small_vocab, r"has \d+ tokens but the model embeds only 100 .*different models"),
        (_remote_code, r"custom code \(auto_map\)"),
    ],
    ids=["missing", "no_config", "not_causal", "no_tokenizer", "vocab_mismatch", "remote_code"],
)
def test_bad_base_model_folders_name_the_field_and_the_fix(
    damage, message, hf_models, hf_augmented, tmp_path
):
    folder = tmp_path / "nowhere"
    if damage is not None:
        folder = _copy(hf_models["llama"], tmp_path / "model")
        damage(folder)
    cfg = tiny_config(f"finetune.base_model={folder}")
    with pytest.raises(TrainingError, match=message):
        finetune(cfg, None, hf_augmented, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_bad_init_from_stops_tokenize_naming_the_field(hf_augmented, tmp_path, data_store):
    from lmforge.data.tokenize import tokenize

    cfg = load_config(None, [*PRETRAIN, f"pretrain.init_from={tmp_path / 'absent'}"])
    with pytest.raises(TrainingError, match=r"pretrain\.init_from: .*absent is not a folder"):
        tokenize(cfg, hf_augmented, tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


# ------------------------------------------------------------------------------ Kubeflow


def test_pipelines_mount_the_work_volume_where_a_base_model_is_read(tmp_path):
    from google.protobuf import json_format
    from test_kfp_compile import parse, repo_config

    from lmforge.errors import PipelineError
    from lmforge_pipelines.compile import compile_pipeline

    mount = repo_config().launch.mount_path
    cfg = repo_config(
        f"pretrain.init_from={mount}/models/qwen2", f"finetune.base_model={mount}/models/gpt2"
    )
    _, platform = parse(compile_pipeline(cfg, "full", tmp_path / "full.yaml"))
    executors = json_format.MessageToDict(platform.platforms["kubernetes"])["deploymentSpec"][
        "executors"
    ]
    for step in ("tokenize", "pretrain", "finetune"):
        assert executors[f"exec-{step}"]["pvcMount"][0]["mountPath"] == mount, step
    assert "pvcMount" not in executors["exec-validate"]
    outside = repo_config("finetune.base_model=/home/me/gpt2")
    with pytest.raises(PipelineError, match=r"finetune\.base_model: /home/me/gpt2 is not on the"):
        compile_pipeline(outside, "full", tmp_path / "bad.yaml")
