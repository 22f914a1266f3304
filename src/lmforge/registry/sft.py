"""Register an instruction-tuned model (``finetune.task: sft``) as a text-generation model.

``register_sft(cfg, finetuned_dir, evaluation_dir, out_dir)`` (what ``register`` calls when the
evaluation report is an SFT one) logs ``finetuned_dir/model`` with MLflow's transformers flavour
(task ``text-generation``, explicit pip requirements, a signature whose input example is a
held-out prompt in the model's chat template), registers a version of
``register.sft_model_name`` tagged with lineage and the evaluation's numbers
(``lmforge.metric.rouge_l``, ...) and points ``challenger`` at it. ``lmforge promote --model
<register.sft_model_name>`` then gates on ``register.sft_primary_metric``.
Output: ``registered.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.errors import RegistryError
from lmforge.outputs import atomic_output_dir
from lmforge.registry.connection import bounded_http, describe, ensure_reachable
from lmforge.registry.versions import RegisteredVersion, log_and_register, saved_model_dir
from lmforge.tracking import is_number


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
    stage = tracking.stage_run(cfg, "register", sections=("register",))
    with stage as run:
        tags = {
            **tracking.lineage_tags(cfg),
            tracking.PARENT_RUN_TAG: stage.parent_id,
            "lmforge.run_id": run.info.run_id,
            "lmforge.task": "sft",
        }
        mlflow.log_metrics({f"sft.{k}": v for k, v in metrics.items()})
        sample = report["samples"][0] if report.get("samples") else {}
        sft = log_and_register(
            cfg,
            model_dir,
            name=cfg.register.sft_model_name,
            artifact="sft_model",
            task="text-generation",
            example=[example_prompt(model_dir, report)],
            output_example=[sample.get("reference", "Hello.")],
            params=dict(report["generation"]),
            metrics=metrics,
            tags=tags,
        )
        return SftRegisterResult(
            run_id=run.info.run_id, pipeline_run_id=tracking.pipeline_run_id(cfg), sft=sft
        )
