"""The evaluate step: held-out numbers that decide registration, and a report people read.

``evaluate(cfg, pretrained_dir, finetuned_dir, tokenized_dir, augmented_dir, out_dir)`` scores:

- the pretrained language model: perplexity on ``tokenized_dir/blocks/test.bin``, and completions
  of ``evaluate.sample_prompts`` (seeded sampling); none when this run pretrained none
  (``finetune.base_model``: the report's ``lm`` section says so, ``lmforge.train.skipped``);
- the fine-tuned classifier on the labelled test split, over the task's N classes (``data.labels``
  or those validate took from the training split: ``lmforge.data.labels``): accuracy, macro-F1,
  per-class precision/recall/F1 and the N x N confusion matrix;
- on the same split, for comparison: the from-scratch baseline (``finetuned_dir/baseline``), the
  majority class of the training split, and the registry's current champion
  (the version under ``models:/NAME@champion``, loaded with remote code disabled) when there is one.

The gate (``passed``, what the pipeline tests before registering) is the promotion gate's
absolute threshold on the primary metric (``register``) plus beating the majority class; beating
the champion is reported here and enforced by ``lmforge promote``. Output folder: ``report.json``,
``report.md``, ``samples.json``, ``metrics.json`` (DVC metrics), ``plots/confusion.csv`` (one row
per test record: DVC's confusion template) and ``plots/confusion.png``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.config import Config
from lmforge.data.labels import task_labels
from lmforge.errors import DataError
from lmforge.metrics import (
    Check,
    beats,
    classification_scores,
    gate,
    per_class_scores,
    perplexity_of,
    token_nll,
)
from lmforge.outputs import atomic_output_dir
from lmforge.tracking import is_number

EXAMPLE_CHARS = 300  # the classifier's logged input example: a test text, cut to this length


@dataclass
class EvaluationResult:
    perplexity: float | None  # None: no LM pretrained in this run (finetune.base_model)
    accuracy: float
    macro_f1: float
    baseline_accuracy: float | None
    baseline_macro_f1: float | None
    majority_accuracy: float
    majority_macro_f1: float
    champion_version: str | None
    champion_primary: float | None
    primary_metric: str
    passed: bool


# --------------------------------------------------------------------------------------------
# Language model
# --------------------------------------------------------------------------------------------


def perplexity(model, tokenized_dir: Path, max_batches: int, batch_size: int) -> dict[str, float]:
    """Mean next-token loss over the first test blocks, and its exponential."""
    from lmforge.train.data import BlockDataset

    test = BlockDataset(Path(tokenized_dir) / "blocks", "test")
    seq_len = min(test.meta.block_size, model.config.max_position_embeddings)
    n_blocks = min(len(test), max(1, max_batches) * batch_size)
    batches = (
        test.batch(np.arange(start, min(start + batch_size, n_blocks)), seq_len)
        for start in range(0, n_blocks, batch_size)
    )
    total, count = token_nll(model, batches)
    loss = total / count
    return {"perplexity": perplexity_of(loss), "loss": loss, "n_blocks": float(n_blocks)}


def samples(model, tokenizer, cfg: Config) -> list[dict[str, str]]:
    """Completions of the fixed prompts, seeded, so reports are comparable run to run.

    The same call as ``lmforge generate`` (``lmforge.serve.generate``), without the stream.
    """
    from lmforge.serve.generate import Sampling, complete_all

    done = complete_all(
        model, tokenizer, list(cfg.evaluate.sample_prompts), Sampling.of_evaluate(cfg)
    )
    return [{"prompt": c.prompt, "completion": c.completion} for c in done]


def score_lm(cfg: Config, pretrained_dir: Path, tokenized_dir: Path) -> tuple[dict, list]:
    """The report's LM section (perplexity) and its samples. With no LM in this run
    (``finetune.base_model`` set: ``lmforge.train.skipped``) the section says why, and no
    samples: the classifier's base model is not lmforge's LM, and an older LM is not this run's."""
    from lmforge.train.skipped import lm_skipped

    reason = lm_skipped(cfg, pretrained_dir)
    if reason is not None:
        return {"skipped": True, "reason": reason}, []
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm_dir = pretrained_dir / "model"
    if not (lm_dir / "config.json").is_file():
        raise DataError(f"{lm_dir}: no pretrained model (config.json); run pretrain first")
    lm = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    numbers = perplexity(
        lm, tokenized_dir, cfg.evaluate.max_perplexity_batches, cfg.evaluate.batch_size
    )
    return numbers, samples(lm, AutoTokenizer.from_pretrained(lm_dir), cfg)


# --------------------------------------------------------------------------------------------
# Classifier
# --------------------------------------------------------------------------------------------


def scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Accuracy, macro-F1, n_test and the confusion matrix (``lmforge.metrics``)."""
    return classification_scores(y_true, y_pred, n_classes)


def _numbers_and_confusion(scored: dict[str, Any]) -> tuple[dict[str, Any], list[list[int]]]:
    """The report keeps numbers per model (the registry logs them) and one confusion matrix."""
    numbers = {k: v for k, v in scored.items() if k != "confusion"}
    return numbers, scored["confusion"]


def model_labels(model) -> list[str]:
    """The classes a classifier predicts, in its own id order."""
    return [str(model.config.id2label[i]) for i in range(model.config.num_labels)]


def classify(model, tokenizer, texts: list[str], labels: list[str], cfg: Config) -> np.ndarray:
    """Predicted label indices (in ``labels`` order, whatever the model's own id order)."""
    import torch

    from lmforge.train.classify import collate, encode

    theirs = model_labels(model)
    if sorted(theirs) != sorted(labels):
        raise DataError(
            f"{model.name_or_path}: the classifier predicts {theirs}, the task has {labels}; "
            "fine-tune again on these splits (lmforge finetune)"
        )
    rows = [{"text": t, "label": labels[0]} for t in texts]
    enc = encode(rows, tokenizer, labels, cfg.finetune.max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    to_ours = np.array([labels.index(label) for label in theirs])
    preds = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(enc.ids), cfg.evaluate.batch_size):
            batch = collate(enc.ids[start : start + cfg.evaluate.batch_size], pad, model.device)
            preds.append(model(**batch).logits.argmax(-1).cpu().numpy())
    return to_ours[np.concatenate(preds)]


def load_classifier(model_dir: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not (model_dir / "config.json").is_file():
        raise DataError(f"{model_dir}: no classifier (config.json); run finetune first")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    return model, AutoTokenizer.from_pretrained(model_dir)


def champion(cfg: Config) -> tuple[str, Any, Any] | None:
    """(version, model, tokenizer) of ``models:/NAME@champion``; None when there is none.

    Loaded with remote code disabled (``lmforge.registry.loading``); a registry that cannot be
    read is an error, never "no champion".
    """
    from lmforge import tracking
    from lmforge.registry.aliases import find_alias
    from lmforge.registry.loading import load_classifier_version

    name, alias = cfg.register.classifier_model_name, cfg.register.champion_alias
    client = tracking.client(cfg)
    found = find_alias(client, name, alias, model_may_be_missing=True)
    if found is None:
        return None
    version = str(found.version)  # pinned: the alias may move while we load
    model, tokenizer = load_classifier_version(client, name, version)
    return version, model, tokenizer


# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------


def evaluate(
    cfg: Config,
    pretrained_dir: Path,
    finetuned_dir: Path,
    tokenized_dir: Path,
    augmented_dir: Path,
    out_dir: Path,
) -> EvaluationResult:
    """Score the LM and the classifier (vs baseline, majority, champion); write ``out_dir``.

    When finetune wrote a causal LM (``finetune.task: sft``), score that instead on its held-out
    pairs against the untuned model (``lmforge.evaluate_sft``)."""
    from lmforge.evaluate_sft import evaluate_sft, is_sft_output

    if is_sft_output(Path(finetuned_dir)):
        return evaluate_sft(cfg, Path(finetuned_dir), Path(out_dir))
    import torch

    from lmforge import tracking
    from lmforge.train.classify import read_labelled

    torch.manual_seed(cfg.evaluate.sample_seed)
    primary = cfg.register.primary_metric
    labelled = Path(augmented_dir) / "labelled"
    labels = task_labels(cfg, labelled)  # listed, or recorded by validate from the train split
    test = read_labelled(labelled / "test.jsonl", labels)
    train_counts = Counter(r["label"] for r in read_labelled(labelled / "train.jsonl", labels))
    texts = [r["text"] for r in test]
    y_true = np.array([labels.index(r["label"]) for r in test])

    report: dict[str, Any] = {"labels": labels, "primary_metric": primary}
    # register logs it as the classifier's input example: a text of the task, not a made-up one
    report["input_example"] = texts[0][:EXAMPLE_CHARS] if texts else None
    report["lm"], report["samples"] = score_lm(cfg, Path(pretrained_dir), Path(tokenized_dir))

    def score(model, tokenizer) -> tuple[dict[str, Any], np.ndarray]:
        preds = classify(model, tokenizer, texts, labels, cfg)
        return scores(y_true, preds, len(labels)), preds

    model, tokenizer = load_classifier(Path(finetuned_dir) / "model")
    scored, y_pred = score(model, tokenizer)  # once: the report and the plots share these
    report["classifier"], confusion = _numbers_and_confusion(scored)
    report["classifier"]["per_class"] = per_class_scores(np.array(confusion), labels)
    del model
    baseline_dir = Path(finetuned_dir) / "baseline"
    report["baseline"] = None
    if (baseline_dir / "config.json").is_file():
        report["baseline"] = _numbers_and_confusion(score(*load_classifier(baseline_dir))[0])[0]
    majority = labels.index(train_counts.most_common(1)[0][0])
    majority_scores = scores(y_true, np.full_like(y_true, majority), len(labels))
    report["majority"] = {"label": labels[majority], **_numbers_and_confusion(majority_scores)[0]}
    report["champion"] = None
    found = champion(cfg) if cfg.evaluate.compare_champion else None
    other_task = None  # a champion of other classes: nothing to compare on this test split
    if found is not None:
        version, champ, champ_tok = found
        if sorted(model_labels(champ)) == sorted(labels):
            champ_scores = _numbers_and_confusion(score(champ, champ_tok)[0])[0]
            report["champion"] = {"version": version, **champ_scores}
        else:
            other_task = Check(
                f"beats champion v{version}",
                False,
                f"not compared: the champion predicts {model_labels(champ)}, this task has "
                f"{labels}",
            )

    challenger = report["classifier"]
    checks = gate(primary, challenger, None, cfg.register.min_primary, 0.0)[:1]
    checks.append(beats("majority class", primary, challenger, report["majority"]))
    informative = [beats("baseline (from scratch)", primary, challenger, report["baseline"])]
    if report["champion"] is not None:
        informative.append(
            beats(
                f"champion v{report['champion']['version']}",
                primary,
                challenger,
                report["champion"],
            )
        )
    informative.append(other_task)
    passed = all(c.passed for c in checks)
    report["gate"] = {
        "passed": passed,
        "checks": [asdict(c) for c in checks],
        "comparisons": [asdict(c) for c in informative if c is not None],
    }
    report["confusion"] = confusion

    result = EvaluationResult(
        perplexity=report["lm"].get("perplexity"),  # None: no LM in this run
        accuracy=challenger["accuracy"],
        macro_f1=challenger["macro_f1"],
        baseline_accuracy=report["baseline"] and report["baseline"]["accuracy"],
        baseline_macro_f1=report["baseline"] and report["baseline"]["macro_f1"],
        majority_accuracy=report["majority"]["accuracy"],
        majority_macro_f1=report["majority"]["macro_f1"],
        champion_version=report["champion"] and report["champion"]["version"],
        champion_primary=report["champion"] and report["champion"].get(primary),
        primary_metric=primary,
        passed=passed,
    )
    metrics = _dvc_metrics(result)
    with tracking.stage_run(cfg, "evaluate", sections=("evaluate", "register")) as _run:
        import mlflow

        with atomic_output_dir(Path(out_dir)) as tmp:
            _write_report(tmp, report, metrics, y_true, y_pred, labels)
        mlflow.log_metrics(metrics)
        _log_per_model(
            cfg, report, Path(pretrained_dir), Path(finetuned_dir), tokenized_dir, labelled
        )
        for name in ("report.md", "report.json", "samples.json", "plots/confusion.png"):
            mlflow.log_artifact(
                str(Path(out_dir) / name), str(Path(name).parent) if "/" in name else None
            )
    return result


def _log_per_model(cfg, report, pretrained_dir, finetuned_dir, tokenized_dir, labelled) -> None:
    """Each model's test numbers on that model (``model_id``) and the split they were measured
    on, under the same names (``test_accuracy``...): each model's page shows its own, and
    ``search_logged_models`` ranks them. The run's ``test_*`` value is the fine-tuned model's
    (logged last); ``accuracy``, ``baseline_accuracy``... stay the run's own metrics."""
    import mlflow

    from lmforge import lineage, tracking

    client, run_id = tracking.client(cfg), mlflow.active_run().info.run_id
    test = tracking.dataset(labelled / "test.jsonl", "labelled-test", "test")
    blocks = Path(tokenized_dir) / "blocks" / "test.bin"
    datasets = [
        test,
        *([tracking.dataset(blocks, "blocks-test", "test")] if blocks.is_file() else []),
    ]
    lineage.log_datasets(client, run_id, datasets)
    trained = lineage.trained_models(finetuned_dir)

    def test_numbers(scores):
        return {lineage.TEST_PREFIX + k: v for k, v in (scores or {}).items() if k != "n_test"}

    if report["champion"] is not None:
        champ = client.get_model_version(
            cfg.register.classifier_model_name, report["champion"]["version"]
        )
        lineage.log_model_metrics(
            client, run_id, lineage.version_model_id(champ), test_numbers(report["champion"]), test
        )
    lineage.log_model_metrics(
        client, run_id, trained.get(lineage.BASELINE_MODEL), test_numbers(report["baseline"]), test
    )
    lm_id = lineage.trained_models(pretrained_dir).get(lineage.LM_MODEL)
    if not report["lm"].get("skipped") and len(datasets) > 1:
        lm = {k: report["lm"][k] for k in ("perplexity", "loss")}
        lineage.log_model_metrics(client, run_id, lm_id, test_numbers(lm), datasets[1])
    lineage.log_model_metrics(
        client,
        run_id,
        trained.get(lineage.CLASSIFIER_MODEL),
        test_numbers(report["classifier"]),
        test,
    )


def _dvc_metrics(result: EvaluationResult) -> dict[str, float]:
    metrics = {k: v for k, v in asdict(result).items() if is_number(v)}
    metrics["gate_passed"] = int(result.passed)
    return metrics


def _write_report(tmp, report, metrics, y_true, y_pred, labels) -> None:
    import csv

    (tmp / "plots").mkdir()
    (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (tmp / "samples.json").write_text(json.dumps(report["samples"], indent=2) + "\n")
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with (tmp / "plots" / "confusion.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["actual", "predicted"])
        writer.writerows((labels[a], labels[p]) for a, p in zip(y_true, y_pred, strict=True))
    _confusion_png(tmp / "plots" / "confusion.png", np.array(report["confusion"]), labels)
    (tmp / "report.md").write_text(_markdown(report))


def _confusion_png(path: Path, confusion: np.ndarray, labels: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Grows with the number of classes so that cells, counts and names stay legible; long or
    # many names are slanted on the x axis so that they do not overlap.
    n = len(labels)
    side = min(4 + 0.5 * max(0, n - 2), 16)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(confusion, cmap="Blues", vmin=0)
    slant = n > 4 or max(len(label) for label in labels) > 6
    ax.set_xticks(range(n), labels, rotation=45 if slant else 0, ha="right" if slant else "center")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    dark = confusion.max() / 2 if confusion.size else 0
    for (i, j), count in np.ndenumerate(confusion):
        colour = "white" if count > dark else "black"  # readable on dark and light cells
        ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=9)
    ax.set_title("Fine-tuned classifier, test split")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _markdown(report: dict[str, Any]) -> str:
    primary = report["primary_metric"]
    lines = ["# Evaluation report", "", "## Classifier (labelled test split)", ""]
    lines += ["| model | accuracy | macro-F1 |", "| --- | --- | --- |"]
    named = [
        ("fine-tuned", report["classifier"]),
        ("baseline (from scratch)", report["baseline"]),
        (f"majority class ({report['majority']['label']})", report["majority"]),
    ]
    if report["champion"] is not None:
        named.append((f"champion v{report['champion']['version']}", report["champion"]))
    for name, s in named:
        if s is not None:
            lines.append(f"| {name} | {s['accuracy']:.4f} | {s['macro_f1']:.4f} |")
    per_class = report["classifier"].get("per_class") or {}
    if per_class:
        lines += ["", "Fine-tuned classifier per class:", ""]
        lines += [
            "| class | precision | recall | F1 | test records |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {label} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} "
            f"| {c['support']} |"
            for label, c in per_class.items()
        ]
    gate = report["gate"]
    lines += ["", f"Gate on {primary}: **{'passed' if gate['passed'] else 'failed'}**", ""]
    lines += [
        f"- {'✅' if c['passed'] else '❌'} {c['name']}: {c['detail']}" for c in gate["checks"]
    ]
    lines += [
        f"- {'↑' if c['passed'] else '↓'} {c['name']}: {c['detail']}" for c in gate["comparisons"]
    ]
    lines += ["", "## Language model (test blocks)", "", *_lm_markdown(report)]
    lines += ["", "Confusion matrix: `plots/confusion.png` (rows: actual, columns: predicted).", ""]
    return "\n".join(lines)


def _lm_markdown(report: dict[str, Any]) -> list[str]:
    lm = report["lm"]
    if lm.get("skipped"):
        return [f"Not pretrained in this run: {lm['reason']}."]
    lines = [
        f"Perplexity **{lm['perplexity']:.2f}** (loss {lm['loss']:.4f} nats/token, "
        f"{int(lm['n_blocks'])} blocks)",
        "",
        "## Samples",
        "",
    ]
    return lines + [f"- **{s['prompt']}**{s['completion']}" for s in report["samples"]]
