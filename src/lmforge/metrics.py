"""Metrics shared by training, evaluation and the registry: one definition of each number.

- classification: :func:`confusion_matrix`, :func:`macro_f1`, :func:`per_class_scores`,
  :func:`classification_scores`;
- language modelling: :func:`token_nll` (summed next-token loss and its count) and
  :func:`perplexity_of`;
- the promotion gate: :class:`Check`, :func:`greater_is_better`, :func:`gate` (pure, so every case
  is testable without a registry), and :func:`beats` for the evaluation's comparisons.

No torch or mlflow at import time: the CLI and the registry load this module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

LOWER_IS_BETTER = ("perplexity", "loss")  # metric names ending so; everything else: higher
MAX_LOSS = 50.0  # exp(50) is already meaningless as a perplexity; larger would overflow


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts of (true, predicted) label index pairs."""
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return confusion


def _precision_recall_f1(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class, from a (true, predicted) count matrix; 0 where a ratio has no denominator."""
    confusion = np.asarray(confusion)
    tp = np.diag(confusion).astype(float)
    precision = np.divide(tp, confusion.sum(0), out=np.zeros_like(tp), where=confusion.sum(0) > 0)
    recall = np.divide(tp, confusion.sum(1), out=np.zeros_like(tp), where=confusion.sum(1) > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def macro_f1(confusion: np.ndarray) -> float:
    """Mean over classes of F1, from a (true, predicted) count matrix; 0 for an absent class."""
    return float(_precision_recall_f1(confusion)[2].mean())


def per_class_scores(confusion: np.ndarray, labels: list[str]) -> dict[str, dict[str, float]]:
    """``{label: {precision, recall, f1, support}}`` (support: the class's true records)."""
    precision, recall, f1 = _precision_recall_f1(confusion)
    support = np.asarray(confusion).sum(1)
    return {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }


def classification_scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Accuracy, macro-F1, the number of records and the confusion matrix (as lists)."""
    confusion = confusion_matrix(y_true, y_pred, n_classes)
    return {
        "accuracy": float(np.mean(np.asarray(y_true) == np.asarray(y_pred))),
        "macro_f1": macro_f1(confusion),
        "n_test": float(len(y_true)),
        "confusion": confusion.tolist(),
    }


# --------------------------------------------------------------------------------------------
# Language modelling
# --------------------------------------------------------------------------------------------


def token_nll(model, batches: Iterable) -> tuple[float, int]:
    """(summed next-token loss in nats, number of predicted tokens) of ``model`` over ``batches``.

    Each batch is a ``(B, T)`` tensor of token ids; HF causal LMs average their loss over the
    ``B * (T - 1)`` predicted positions, so the sum is that mean times the count. Callers that
    shard the data across ranks all-reduce both numbers before dividing.
    """
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            n = batch.shape[0] * (batch.shape[1] - 1)
            total += float(model(input_ids=batch, labels=batch).loss) * n
            count += n
    return total, count


def perplexity_of(mean_loss: float) -> float:
    """exp of the mean next-token loss, capped so a diverged model reports a finite number."""
    return math.exp(min(mean_loss, MAX_LOSS))


# --------------------------------------------------------------------------------------------
# The gate
# --------------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def greater_is_better(metric: str) -> bool:
    return not metric.endswith(LOWER_IS_BETTER)


def gate(
    metric: str,
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    threshold: float,
    margin: float,
) -> list[Check]:
    """The checks a challenger must pass; each says what it compared, with the numbers.

    ``threshold`` is a minimum for higher-is-better metrics and a maximum for the others;
    ``champion`` is None when there is no champion yet (only the threshold applies then).
    """
    higher = greater_is_better(metric)
    value = challenger.get(metric)
    if value is None:
        have = ", ".join(sorted(challenger)) or "none"
        return [Check("metric", False, f"challenger has no {metric!r} (it has: {have})")]
    checks = []
    passed = value >= threshold if higher else value <= threshold
    relation = ">=" if higher else "<="
    checks.append(
        Check("threshold", passed, f"{metric} {value:.4f} {relation} {threshold:.4f} required")
    )
    if champion is None:
        checks.append(Check("champion", True, "no champion yet: nothing to beat"))
        return checks
    best = champion.get(metric)
    if best is None:
        checks.append(
            Check("champion", False, f"the champion has no {metric!r}: cannot compare; set one")
        )
        return checks
    gain = value - best if higher else best - value
    checks.append(
        Check(
            "margin",
            gain > margin,
            f"{metric} {value:.4f} vs champion {best:.4f}: "
            f"{'gain' if gain >= 0 else 'loss'} {abs(gain):.4f}, must exceed margin {margin:.4f}",
        )
    )
    return checks


def beats(what: str, metric: str, challenger: dict, other: dict | None) -> Check | None:
    """Whether ``challenger`` is better than ``other`` on ``metric`` (None without ``other``)."""
    if other is None:
        return None
    gain = challenger[metric] - other[metric]
    if not greater_is_better(metric):
        gain = -gain
    return Check(
        f"beats {what}",
        gain > 0,
        f"{metric} {challenger[metric]:.4f} vs {what} {other[metric]:.4f} ({gain:+.4f})",
    )


# --------------------------------------------------------------------------------------------
# Generated text (instruction tuning)
# --------------------------------------------------------------------------------------------


def text_tokens(text: str) -> list[str]:
    """Lower-cased whitespace tokens: what exact match and ROUGE-L compare."""
    return text.lower().split()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the two texts have the same tokens (case and spacing ignored), else 0.0."""
    return float(text_tokens(prediction) == text_tokens(reference))


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta 1): the longest common token subsequence over both lengths."""
    pred, ref = text_tokens(prediction), text_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    row = [0] * (len(ref) + 1)  # one row of the LCS table at a time
    for p in pred:
        diagonal = 0
        for j, r in enumerate(ref, 1):
            diagonal, row[j] = row[j], diagonal + 1 if p == r else max(row[j], row[j - 1])
    lcs = row[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)
