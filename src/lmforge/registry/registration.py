"""Register both models: new versions of the models their training runs logged, ``challenger``.

The pretrained language model (``text-generation``) and the fine-tuned classifier
(``text-classification``) were logged as LoggedModels by pretrain and finetune; each version is
registered from ``models:/<model_id>`` (no weights copied), with a model card as its description
(``lmforge.registry.trained``, ``lmforge.registry.card``). With ``finetune.base_model`` set no LM
was pretrained in the run, and only the classifier is registered. Output: ``registered.json``
(model names, versions, run ids; ``lm`` null and ``lm_skipped`` the reason then).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmforge import lineage
from lmforge.config import Config
from lmforge.errors import RegistryError
from lmforge.outputs import atomic_output_dir
from lmforge.registry.card import CardFacts
from lmforge.registry.connection import bounded_http, describe, ensure_reachable
from lmforge.registry.trained import register_trained
from lmforge.registry.versions import RegisteredVersion, saved_model_dir
from lmforge.tracking import is_number

# The classifier's input example when the report has none of the task's own texts.
FALLBACK = "A text to classify."
# The model cards' "known limits": what the numbers cannot tell a reader.
CLASSIFIER_LIMITS = [
    "Scored on one held-out split of the same sources as training: no claim beyond them.",
    "Texts are truncated to finetune.max_length tokens: the end of a long text is not read.",
    "Labels come from the labelled set as validated; its mistakes are learned too.",
]
LM_LIMITS = [
    "A small decoder trained from scratch on the project's corpus: fluent only in its style.",
    "Not instruction-tuned and not aligned: it continues text, it does not follow requests.",
    "Perplexity is on the tokenized test blocks of the same corpus, with its own tokenizer: "
    "not comparable with other tokenizers.",
]


@dataclass
class RegisterResult:
    run_id: str
    pipeline_run_id: str
    lm: RegisteredVersion | None  # None: no LM pretrained in this run (``lm_skipped`` says why)
    classifier: RegisteredVersion
    lm_skipped: str | None = None


def _evaluation(evaluation_dir: Path) -> dict[str, Any]:
    path = evaluation_dir / "report.json"
    try:
        report = json.loads(path.read_text())
        # Numbers only: they become metrics and version tags (per-class scores stay in the report).
        numbers = {
            section: {k: v for k, v in dict(report[section]).items() if is_number(v)}
            for section in ("lm", "classifier")
        }
        # The model card's comparisons (None: not in this evaluation).
        for section in ("baseline", "majority", "champion"):
            found = report.get(section)
            numbers[section] = {k: v for k, v in found.items() if is_number(v)} if found else None
        numbers["majority_label"] = (report.get("majority") or {}).get("label")
        numbers["champion_version"] = (report.get("champion") or {}).get("version")
        example = report.get("input_example")  # absent from reports written before it was
        return {**numbers, "input_example": example if isinstance(example, str) else FALLBACK}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RegistryError(
            f"{path}: unreadable evaluation report ({exc}); run `lmforge evaluate` first"
        ) from None


def register(
    cfg: Config, pretrained_dir: Path, finetuned_dir: Path, evaluation_dir: Path, out_dir: Path
) -> RegisterResult:
    """Log and register both models as new versions with the alias ``challenger``; the
    classifier only when this run pretrained no LM (``finetune.base_model``:
    ``lmforge.train.skipped``), and the result's ``lm_skipped`` says why."""
    from mlflow.exceptions import MlflowException

    from lmforge import tracking

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # MLflow asks the hub for a model card
    from lmforge.registry.sft import register_sft, sft_report

    if (sft := sft_report(Path(evaluation_dir))) is not None:  # finetune.task sft
        return register_sft(cfg, Path(finetuned_dir), Path(evaluation_dir), Path(out_dir), sft)
    from lmforge.train.skipped import lm_skipped

    pretrained_dir, finetuned_dir = Path(pretrained_dir), Path(finetuned_dir)
    skipped = lm_skipped(cfg, pretrained_dir)  # finetune.base_model: the classifier only
    lm_dir = None if skipped else saved_model_dir(pretrained_dir, "pretrained")
    clf_dir = saved_model_dir(finetuned_dir, "fine-tuned")
    report = _evaluation(Path(evaluation_dir))
    uri = tracking.tracking_uri(cfg)
    ensure_reachable(cfg, uri)
    # Retries bounded; the per-request timeout stays MLflow's (weights upload in few requests).
    with bounded_http(cfg):
        try:
            result = _register(cfg, lm_dir, clf_dir, report)
            result.lm_skipped = skipped
        except MlflowException as exc:
            raise RegistryError(
                f"registering into {uri} failed ({describe(exc)}); versions registered before "
                "the failure keep the alias challenger: rerun `lmforge register`"
            ) from None
    with atomic_output_dir(Path(out_dir)) as tmp:
        (tmp / "registered.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def _register(
    cfg: Config, lm_dir: Path | None, clf_dir: Path, report: dict[str, Any]
) -> RegisterResult:
    import mlflow

    from lmforge import tracking

    labels = json.loads((clf_dir / "config.json").read_text()).get("id2label", {})
    first_label = next(iter(labels.values()), "label")  # the signature: a label and its score
    with tracking.stage_run(cfg, "register", sections=("register",)) as run:
        lm = None if lm_dir is None else _register_lm(cfg, lm_dir, report)
        classifier = register_trained(
            cfg,
            clf_dir.parent,
            lineage.CLASSIFIER_MODEL,
            cfg.register.classifier_model_name,
            fallback={
                "task": "text-classification",
                "example": [report["input_example"]],
                "output_example": [{"label": first_label, "score": 0.5}],
            },
            evaluation=report["classifier"],
            facts=CardFacts(
                title="Text classifier fine-tuned from lmforge's language model",
                task="text-classification",
                labels=[str(v) for v in labels.values()],
                comparisons={
                    "this model": report["classifier"],
                    "baseline (same architecture, from scratch)": report["baseline"],
                    f"majority class ({report['majority_label']})": report["majority"],
                    f"champion v{report['champion_version']}": report["champion"],
                },
                limits=CLASSIFIER_LIMITS,
            ),
        )
        mlflow.log_metrics({f"lm.{k}": float(v) for k, v in report["lm"].items()})
        mlflow.log_metrics({f"classifier.{k}": float(v) for k, v in report["classifier"].items()})
        return RegisterResult(
            run_id=run.info.run_id,
            pipeline_run_id=tracking.pipeline_run_id(cfg),
            lm=lm,
            classifier=classifier,
        )


def _register_lm(cfg: Config, lm_dir: Path, report: dict[str, Any]):
    return register_trained(
        cfg,
        lm_dir.parent,
        lineage.LM_MODEL,
        cfg.register.lm_model_name,
        fallback={
            "task": "text-generation",
            "example": list(cfg.evaluate.sample_prompts[:1]) or ["Once upon a time"],
            "output_example": ["Once upon a time there was"],
            "params": {"max_new_tokens": cfg.evaluate.sample_max_new_tokens, "do_sample": False},
        },
        evaluation=report["lm"],
        facts=CardFacts(
            title="Decoder language model pretrained by lmforge",
            task="text-generation",
            comparisons={"this model": report["lm"]},
            limits=LM_LIMITS,
        ),
    )
