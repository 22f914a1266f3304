"""Register an instruction-tuned model (``finetune.task: sft``) as a text-generation model.

``register_sft(cfg, finetuned_dir, evaluation_dir, out_dir)`` (what ``register`` calls when the
evaluation report is an SFT one) registers the LoggedModel ``sft_model`` that finetune logged
(``lmforge.registry.trained``: ``models:/<model_id>``, the evaluation's numbers ``test_rouge_l``,
... on the model, a model card; a folder no run of this store logged is logged here, with task
``text-generation`` and a held-out prompt in the model's chat template as its input example) as
a version of ``register.sft_model_name`` and points ``challenger`` at it. ``lmforge promote --model
<register.sft_model_name>`` then gates on ``register.sft_primary_metric``.
Output: ``registered.json``.
"""

from __future__ import annotations

import json
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

SFT_LIMITS = [
    "Tuned on the project's prompt/response pairs: it answers in their style and scope.",
    "Exact match and ROUGE-L compare with one reference answer; a good answer worded "
    "otherwise scores low.",
    "Not safety-tuned: it can repeat what its training text holds.",
]


@dataclass
class SftRegisterResult:
    run_id: str
    pipeline_run_id: str
    sft: RegisteredVersion


def sft_report(evaluation_dir: Path) -> dict[str, Any] | None:
    """The SFT evaluation report, or None when the evaluation is a classifier's."""
    path = Path(evaluation_dir) / "report.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # register's own reading names the problem
    return report if isinstance(report, dict) and report.get("task") == "sft" else None


def example_prompt(model_dir: Path, report: dict[str, Any]) -> str:
    """A held-out prompt as the served model expects it: in its saved chat template."""
    from transformers import AutoTokenizer

    from lmforge.train.sft import PLAIN_TEMPLATE, prompt_text

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    template = getattr(tokenizer, "chat_template", None) or PLAIN_TEMPLATE
    prompt = report["samples"][0]["prompt"] if report.get("samples") else "Say hello."
    return prompt_text(tokenizer, template, prompt)


def register_sft(
    cfg: Config, finetuned_dir: Path, evaluation_dir: Path, out_dir: Path, report: dict
) -> SftRegisterResult:
    """Log and register the SFT model as a new version with the alias ``challenger``."""
    from mlflow.exceptions import MlflowException

    from lmforge import tracking

    model_dir = saved_model_dir(Path(finetuned_dir), "instruction-tuned")
    if not (model_dir.parent / "pairs").is_dir():
        raise RegistryError(
            f"{finetuned_dir}: not an SFT finetune output (no pairs/), but {evaluation_dir} "
            "evaluated one: run finetune and evaluate again with the same finetune.task"
        )
    uri = tracking.tracking_uri(cfg)
    ensure_reachable(cfg, uri)
    with bounded_http(cfg):
        try:
            result = _register_sft(cfg, model_dir, report)
        except MlflowException as exc:
            raise RegistryError(
                f"registering into {uri} failed ({describe(exc)}); rerun `lmforge register`"
            ) from None
    with atomic_output_dir(Path(out_dir)) as tmp:
        (tmp / "registered.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def _register_sft(cfg: Config, model_dir: Path, report: dict) -> SftRegisterResult:
    import mlflow

    from lmforge import tracking

    metrics = {k: float(v) for k, v in report["sft"].items() if is_number(v)}
    with tracking.stage_run(cfg, "register", sections=("register",)) as run:
        sample = report["samples"][0] if report.get("samples") else {}
        sft = register_trained(
            cfg,
            model_dir.parent,
            lineage.SFT_MODEL,
            cfg.register.sft_model_name,
            fallback={
                "task": "text-generation",
                "example": [example_prompt(model_dir, report)],
                "output_example": [sample.get("reference", "Hello.")],
                "params": dict(report["generation"]),
                "tags": {"lmforge.task": "sft"},
            },
            evaluation=metrics,
            facts=CardFacts(
                title="Instruction-tuned language model (prompt -> response)",
                task="text-generation",
                comparisons={
                    "this model": metrics,
                    "untuned start": _numbers(report.get("base")),
                    f"champion v{(report.get('champion') or {}).get('version')}": _numbers(
                        report.get("champion")
                    ),
                },
                limits=SFT_LIMITS,
            ),
        )
        mlflow.log_metrics({f"sft.{k}": v for k, v in metrics.items()})
        return SftRegisterResult(
            run_id=run.info.run_id, pipeline_run_id=tracking.pipeline_run_id(cfg), sft=sft
        )


def _numbers(section: dict | None) -> dict | None:
    return {k: v for k, v in section.items() if is_number(v)} if section else None
