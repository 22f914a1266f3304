"""Instruction tuning (finetune.task sft): response-only loss, pairs from jsonl/csv/parquet, the
subject-line task, bucketed batches, and one tiny run through evaluate, register, promote and
generation from the registry (a real embedded MLflow store)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow_fixtures import COMMON, HAM, SPAM, tiny_config

from lmforge import lineage
from lmforge.data.sft_pairs import Pair, load_pairs, read_pairs, subject_line, subject_line_pairs
from lmforge.errors import DataError
from lmforge.metrics import exact_match, rouge_l
from lmforge.registry import provenance
from lmforge.train.sft import (
    IGNORE,
    PLAIN_TEMPLATE,
    BucketedBatches,
    collate,
    encode_pair,
    encode_pairs,
    prompt_text,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_stages):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_stages["pretrain"] / "model")


def toy_pairs(n: int, seed: int = 0) -> list[dict]:
    """Prompts of ham or spam words; the response names the kind: learnable in a few steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        spam = i % 2 == 0
        words = " ".join(rng.choice((SPAM if spam else HAM) + COMMON) for _ in range(8))
        rows.append(
            {"instruction": f"{words} {i}", "output": "free offer" if spam else "meeting notes"}
        )
    return rows


def test_loss_is_on_the_response_tokens_only(tiny_stages, tokenizer):
    from transformers import AutoModelForCausalLM

    pair = Pair("the meeting is tomorrow", "meeting notes")
    ids, labels, truncated = encode_pair(tokenizer, PLAIN_TEMPLATE, pair, max_length=64)
    head = tokenizer(prompt_text(tokenizer, PLAIN_TEMPLATE, pair.prompt), add_special_tokens=False)
    n_prompt = len(head["input_ids"])
    assert not truncated and ids[:n_prompt] == head["input_ids"]  # what generation is given
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[n_prompt:], skip_special_tokens=True) == "meeting notes"

    other = encode_pairs(tokenizer, PLAIN_TEMPLATE, [pair, Pair("free cash", "free offer")], 64)
    batch = collate(other, [0, 1], tokenizer.pad_token_id, torch.device("cpu"))
    padded = batch["attention_mask"] == 0
    assert padded.any() and (batch["labels"][padded] == IGNORE).all()
    model = AutoModelForCausalLM.from_pretrained(tiny_stages["pretrain"] / "model").eval()
    with torch.no_grad():
        logits = model(**batch).logits
        loss = model(**batch).loss
    # The same number by hand: cross-entropy over the response positions alone.
    target = batch["labels"][:, 1:]
    keep = target != IGNORE
    manual = torch.nn.functional.cross_entropy(logits[:, :-1][keep], target[keep])
    assert torch.allclose(loss, manual, atol=1e-5)
    assert int(keep.sum()) == sum(len(lab) - lab.count(IGNORE) for lab in other.labels)


def test_too_long_a_pair_keeps_the_end_of_its_prompt_and_its_response(tokenizer):
    pair = Pair(" ".join(["meeting"] * 80) + " write the subject", "free offer")
    ids, labels, truncated = encode_pair(tokenizer, PLAIN_TEMPLATE, pair, max_length=24)
    assert truncated and len(ids) == 24
    response = [t for t in labels if t != IGNORE]
    assert tokenizer.decode(response, skip_special_tokens=True) == "free offer"
    assert tokenizer.decode(ids[: len(ids) - len(response)]).endswith("write the subject\n")


def test_a_configured_chat_template_formats_the_pairs(tokenizer):
    template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert prompt_text(tokenizer, template, "hi") == "<user>hi<assistant>"
    ids, labels, _ = encode_pair(tokenizer, template, Pair("hi", "free"), 64)
    n_prompt = labels.count(IGNORE)
    assert tokenizer.decode(ids[:n_prompt]) == "<user>hi<assistant>"
    broken = (  # the cue comes after the content only when there is no response
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}>{% endif %}"
    )
    with pytest.raises(DataError, match=r"finetune\.chat_template"):
        encode_pair(tokenizer, broken, Pair("hi", "free"), 64)


def test_bucketed_batches_cover_each_epoch_once_with_little_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=960)
    batches = BucketedBatches(lengths, micro=8, accum=2, world=1, seed=3)
    n = batches.per_epoch()
    seen = np.concatenate([batches.indices(s, m, 0) for s in range(n // 2) for m in range(2)])
    assert sorted(seen.tolist()) == list(range(960))  # one epoch: every pair exactly once

    def waste(idx):
        return float(np.mean(lengths[idx].max() - lengths[idx]))

    bucketed = np.mean([waste(batches.indices(s, 0, 0)) for s in range(40)])
    shuffled = np.mean([waste(rng.permutation(960)[:8]) for _ in range(40)])
    assert bucketed < shuffled / 4
    again = BucketedBatches(lengths, micro=8, accum=2, world=1, seed=3)  # a resumed run
    assert np.array_equal(again.indices(123, 1, 0), batches.indices(123, 1, 0))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_pairs_read_from_each_format_with_configured_fields(tmp_path, fmt):
    import datasets

    rows = toy_pairs(6)
    path = tmp_path / f"pairs.{fmt}"
    ds = datasets.Dataset.from_list(rows)
    {"jsonl": ds.to_json, "csv": ds.to_csv, "parquet": ds.to_parquet}[fmt](str(path))
    pairs = read_pairs(path, "instruction", "output")
    assert pairs == [Pair(r["instruction"], r["output"]) for r in rows]
    with pytest.raises(DataError) as err:
        read_pairs(path, "prompt", "output")
    message = str(err.value)
    assert "'prompt'" in message and "finetune.prompt_field" in message
    assert "'instruction'" in message and "'output'" in message  # the columns it has


def test_empty_values_and_unknown_formats_are_named(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": ""}\n')
    with pytest.raises(DataError, match=r"row 2: column 'response' is empty"):
        read_pairs(path, "prompt", "response")
    with pytest.raises(DataError, match=r"unknown pairs format '\.txt'"):
        read_pairs(tmp_path / "pairs.txt", "prompt", "response")


def test_a_pairs_file_splits_by_prompt_hash_and_is_masked_for_personal_data(tmp_path):
    rows = toy_pairs(200)
    rows[0]["output"] = "write to alice@example.com"
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_config(
        f"finetune.sft_data={path}",
        "finetune.prompt_field=instruction",
        "finetune.response_field=output",
        "finetune.sft_holdout_share=0.3",
    )
    splits = load_pairs(cfg, tmp_path)
    assert sum(map(len, splits.values())) == 200 and all(splits.values())
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    cfg2 = tiny_config(
        f"finetune.sft_data={shuffled}",
        "finetune.prompt_field=instruction",
        "finetune.response_field=output",
        "finetune.sft_holdout_share=0.3",
    )
    again = load_pairs(cfg2, tmp_path)
    assert {s: set(p) for s, p in again.items()} == {s: set(p) for s, p in splits.items()}
    responses = [p.response for pairs in splits.values() for p in pairs]
    assert "write to <|email|>" in responses and not any("alice@" in r for r in responses)


def test_subject_line_pairs_come_from_the_original_emails(tmp_path):
    labelled = tmp_path / "labelled"
    labelled.mkdir()
    body = "Hi all, the meeting moved to Thursday at noon in room four. " * 20
    for split in ("train", "validation", "test"):
        rows = [
            {"id": "1", "label": "ham", "text": f"Meeting moved\n\n{body}"},
            {"id": "2", "label": "ham", "text": f"Meetnig moved\n\n{body}", "augmented_from": "1"},
            {"id": "3", "label": "spam", "text": "no subject line here at all, just text"},
        ]
        (labelled / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = subject_line_pairs(labelled)
    assert [p.response for p in pairs["train"]] == ["Meeting moved"]  # not the augmented copy
    prompt = pairs["test"][0].prompt
    assert prompt.startswith("Hi all") and prompt.endswith("Write the subject line for this email.")
    assert len(prompt) < len(body)  # the body is cut (at a space)
    assert subject_line("Line one\nline two\n\nbody body body body body body") is None


def test_rouge_l_and_exact_match():
    assert (
        exact_match("Free  Offer", "free offer") == 1.0 and exact_match("free", "free offer") == 0
    )
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert rouge_l("police killed the gunman", "the gunman was shot by police") == pytest.approx(
        0.4
    )
    assert rouge_l("", "x") == 0.0 and rouge_l("a b", "c d") == 0.0


@pytest.mark.slow
def test_sft_trains_evaluates_registers_promotes_and_generates(
    embedded_store, tiny_stages, tmp_path
):
    import mlflow

    from lmforge.evaluate import evaluate
    from lmforge.registry import promote, register
    from lmforge.serve.generate import Sampling, generate
    from lmforge.train.finetune import finetune

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in toy_pairs(160)))
    store = embedded_store.tracking.artifact_location
    cfg = tiny_config(
        "finetune.task=sft",
        f"finetune.sft_data={path}",
        "finetune.prompt_field=instruction",
        "finetune.response_field=output",
        "finetune.sft_holdout_share=0.3",
        "finetune.max_steps=40",
        "finetune.lr=0.01",
        "finetune.max_length=32",
        "evaluate.sft_max_new_tokens=4",
        "evaluate.sft_samples=2",
        f"tracking.artifact_location={store}",
    )
    ft, ev = tmp_path / "ft", tmp_path / "ev"
    trained = finetune(cfg, tiny_stages["pretrain"], tiny_stages["augmented"], ft)
    assert trained.task == "sft" and trained.steps == 40
    # What is written and reported is the evaluation with the lowest validation loss.
    rows = csv.DictReader((ft / "plots" / "loss.csv").open())
    evals = {int(r["step"]): float(r["val_loss"]) for r in rows if r["val_loss"]}
    assert trained.monitor == "val_loss" and trained.best_step == min(evals, key=evals.get)
    assert trained.val_loss == pytest.approx(min(evals.values()), abs=1e-5)
    assert trained.val_loss < trained.baseline_val_loss  # tuning lowered the response loss
    assert 0.5 < trained.padding_efficiency <= 1.0
    for folder in ("model", "baseline", "pairs", "plots"):
        assert (ft / folder).is_dir(), folder
    assert (ft / "model" / "chat_template.jinja").read_text() == PLAIN_TEMPLATE

    result = evaluate(cfg, tiny_stages["pretrain"], ft, tiny_stages["tokenized"], None, ev)
    metrics = json.loads((ev / "metrics.json").read_text())
    for key in ("response_perplexity", "exact_match", "rouge_l"):
        assert key in metrics and f"base_{key}" in metrics  # the tuned and the untuned model
    assert metrics["response_perplexity"] < metrics["base_response_perplexity"]
    assert metrics["rouge_l"] > metrics["base_rouge_l"]
    assert result.passed  # above sft_min_primary and better than without fine-tuning
    report = json.loads((ev / "report.json").read_text())
    assert len(report["samples"]) == 2 and {"reference", "sft", "base"} <= set(report["samples"][0])
    assert "## Samples (greedy)" in (ev / "report.md").read_text()

    registered = register(cfg, tiny_stages["pretrain"], ft, ev, tmp_path / "reg")
    client = mlflow.MlflowClient()
    version = client.get_model_version("lmforge-sft", registered.sft.version)
    # The model finetune logged, with evaluate's numbers on it (lmforge.registry.provenance).
    model_id = lineage.trained_models(ft)[lineage.SFT_MODEL]
    assert version.source == f"models:/{model_id}"
    numbers = provenance.version_metrics(client, version)
    assert numbers["rouge_l"] == pytest.approx(metrics["rouge_l"])
    mlmodel_path = mlflow.artifacts.download_artifacts(f"{registered.sft.model_uri}/MLmodel")
    mlmodel = yaml.safe_load(Path(mlmodel_path).read_text())
    assert mlmodel["flavors"]["transformers"]["task"] == "text-generation"
    assert promote(cfg, "lmforge-sft").action == "promoted"

    held_out = json.loads((ft / "pairs" / "test.jsonl").read_text().splitlines()[0])
    prompts, greedy = [held_out["prompt"]], Sampling(max_new_tokens=4, temperature=0)
    uri = "models:/lmforge-sft@champion"
    served = generate(cfg, uri, prompts, greedy, chat=True).completions[0]
    assert served.prompt == held_out["prompt"] + "\n"  # the plain template's prompt and cue
    local = generate(cfg, str(ft / "model"), prompts, greedy, chat=True).completions[0]
    assert served.completion == local.completion and served.new_tokens >= 1
    assert served.completion.strip() == report["samples"][0]["sft"]  # what evaluate scored

    # Evaluated again, the champion (this same model, from the registry) scores the same.
    again = evaluate(cfg, tiny_stages["pretrain"], ft, tiny_stages["tokenized"], None, ev)
    assert again.champion_version == registered.sft.version
    assert again.champion_primary == pytest.approx(metrics["rouge_l"])


@pytest.mark.slow
def test_sft_from_a_base_model_uses_its_own_chat_template(embedded_store, tiny_stages, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    from lmforge.train.finetune import finetune

    base = tmp_path / "base"
    shutil.copytree(tiny_stages["pretrain"] / "model", base)
    own = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = own
    tokenizer.save_pretrained(base)
    path = tmp_path / "pairs.csv"
    path.write_text("q,a\n" + "".join(f"word {i} free,offer {i}\n" for i in range(40)))
    cfg = tiny_config(
        "finetune.task=sft",
        f"finetune.base_model={base}",
        f"finetune.sft_data={path}",
        "finetune.prompt_field=q",
        "finetune.response_field=a",
        "finetune.sft_holdout_share=0.5",
        "finetune.method=lora",
        "finetune.baseline=false",
        "finetune.max_steps=3",
        f"tracking.artifact_location={embedded_store.tracking.artifact_location}",
    )
    result = finetune(cfg, None, tmp_path, tmp_path / "ft")  # no pretrain output needed
    assert result.chat_template == "tokenizer" and result.trainable_params < result.total_params
    saved = AutoTokenizer.from_pretrained(tmp_path / "ft" / "model")
    assert saved.chat_template == own
    assert not (tmp_path / "ft" / "baseline").exists()
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "ft" / "model" / "model.safetensors")
    assert weights and not any("lora" in k for k in weights)  # merged: loads without peft
