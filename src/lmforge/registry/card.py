"""The model card ``register`` writes as a version's description (Markdown, shown in the UI).

``model_card(client, model, facts)``: what the model is, its task and labels, the data it was
trained on (the training run's dataset inputs: name, DVC md5, size, path and commit), how it
was trained (the run's params), its test numbers against the baseline, the majority class and
the champion, and its known limits. Every line comes from the run or the evaluation report; a
fact that is absent is left out, never guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lmforge.tracking import is_number

TRAINING_PARAMS = ("method", "max_steps", "max_epochs", "lr", "seed", "precision", "stop_reason")


@dataclass
class CardFacts:
    title: str  # "spam classifier", "language model"...
    task: str  # MLflow's transformers task
    labels: list[str] = field(default_factory=list)
    # {"this model": {...}, "baseline (from scratch)": {...}, ...}: the evaluation's numbers
    comparisons: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    limits: list[str] = field(default_factory=list)


def _datasets(run) -> list[str]:
    rows = []
    for entry in run.inputs.dataset_inputs if run.inputs else []:
        ds = entry.dataset
        context = next((t.value for t in entry.tags if t.key == "mlflow.data.context"), "")
        try:
            source, profile = json.loads(ds.source or "{}"), json.loads(ds.profile or "{}")
        except ValueError:
            source, profile = {}, {}
        where = f"{source.get('dvc_path', '?')} @ {str(source.get('git_commit', '?'))[:12]}"
        size = f"{profile.get('files', '?')} files, {profile.get('bytes', '?')} bytes"
        rows.append(f"| {ds.name} | {context} | `{ds.digest}` | {size} | {where} |")
    return rows


def _training(run, step: int | None) -> list[str]:
    params = run.data.params
    shown = [
        f"{key.split('.', 1)[-1]}={params[key]}"
        for key in sorted(params)
        if key.split(".", 1)[-1] in TRAINING_PARAMS
    ]
    stage = run.data.tags.get("lmforge.stage", run.info.run_name)
    at = f", step {step}" if step is not None else ""
    return [f"Run `{run.info.run_id}` ({stage}{at}): {', '.join(shown) or 'no params recorded'}."]


def _numbers(comparisons: dict[str, dict[str, Any] | None]) -> list[str]:
    present = {k: v for k, v in comparisons.items() if v}
    keys = sorted({m for v in present.values() for m, x in v.items() if is_number(x)})
    if not keys:
        return ["No evaluation numbers."]
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for who, values in present.items():
        cells = [f"{values[m]:.4g}" if is_number(values.get(m)) else "" for m in keys]
        lines.append(f"| {who} | " + " | ".join(cells) + " |")
    return lines


def model_card(client, model, facts: CardFacts) -> str:
    """The Markdown card of LoggedModel ``model`` (its training run read from the store)."""
    run = client.get_run(model.source_run_id) if model.source_run_id else None
    step = next(
        (
            o.step
            for o in (run.outputs.model_outputs if run and run.outputs else [])
            if o.model_id == model.model_id
        ),
        None,
    )
    lines = [f"## {facts.title}", "", f"Task: `{facts.task}`."]
    if facts.labels:
        lines.append("Labels: " + ", ".join(f"`{label}`" for label in facts.labels) + ".")
    lines += ["", f"LoggedModel `{model.model_id}`.", "", "### Data", ""]
    rows = _datasets(run) if run else []
    if rows:
        lines += ["| dataset | context | DVC md5 | size | source |", "|---|---|---|---|---|", *rows]
    else:
        lines.append("No dataset inputs recorded (logged by lmforge before lineage).")
    if run:
        data_version = run.data.tags.get("lmforge.data_version")
        if data_version:
            lines.append(f"\nRaw data (data.dvc): `{data_version}`.")
        lines += ["", "### Training", "", *_training(run, step)]
    lines += ["", "### Evaluation (test split)", "", *_numbers(facts.comparisons)]
    if facts.limits:
        lines += ["", "### Known limits", "", *(f"- {limit}" for limit in facts.limits)]
    return "\n".join(lines) + "\n"
