"""MLflow model registry: register both models, promote a challenger, roll back.

``register`` logs the pretrained language model (``text-generation``) and the fine-tuned
classifier (``text-classification``) with MLflow's transformers flavour, straight from their saved
directories (no second copy in memory), registers a new version of each under its configured name,
tags the versions with lineage and the evaluation's metrics, and points the alias ``challenger``
at them.

``promote`` moves ``champion`` to a version that passes the gate (:func:`gate`): an absolute
threshold on the primary metric, and a margin over the current champion. The old champion keeps
the alias ``previous``; ``rollback`` gives ``champion`` back to it. Registry aliases only (stages
are deprecated).

Concurrency: every promotion and rollback runs under a mutex kept in the registry itself, so it
holds across processes and machines sharing a tracking server: a registered model named
``<NAME>.promotion-lock``, created to take the lock (the store refuses a second model of the same
name, atomically) and deleted to release it. Under the lock the gate is evaluated on fresh
registry state, so two promotions at once are serialised: the second one is judged against the
first one's result. Alias writes are ordered so that a crash between them leaves a consistent
registry (``previous`` is written before ``champion`` moves).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.errors import RegistryError
from lmforge.outputs import atomic_output_dir

METRIC_TAG = "lmforge.metric."  # + metric name: the evaluation's numbers on each version
HISTORY_TAG = "lmforge.champion_history"  # registered-model tag: JSON list of champion versions
LOCK_SUFFIX = ".promotion-lock"
LOWER_IS_BETTER = ("perplexity", "loss")  # metric names ending so; everything else: higher
# Installed distributions the logged models need; pinned explicitly because MLflow's inference
# would otherwise demand torchvision for a transformers model.
MODEL_REQUIREMENTS = ("mlflow", "transformers", "torch", "tokenizers", "safetensors", "numpy")


@dataclass
class RegisteredVersion:
    name: str
    version: str
    model_uri: str  # models:/NAME/VERSION
    run_id: str
    alias: str


@dataclass
class RegisterResult:
    run_id: str
    pipeline_run_id: str
    lm: RegisteredVersion
    classifier: RegisteredVersion


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class PromoteResult:
    model: str
    action: str  # promoted | unchanged | rolled_back
    champion: str
    previous: str | None
    checks: list[Check] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# The gate: pure, so every case is testable without a registry
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Register
# --------------------------------------------------------------------------------------------


def _requirements() -> list[str]:
    pins = []
    for dist in MODEL_REQUIREMENTS:
        version = metadata.version(dist).split("+")[0]  # torch 2.13.0+cpu -> the public version
        pins.append(f"{dist}=={version}")
    return pins


@contextlib.contextmanager
def _transformers5_checkpoint_compat() -> Iterator[None]:
    """Let MLflow log a model from a local directory under transformers 5.

    MLflow 3.17 reads ``check_task(task)[1]["impl"].__name__`` for the flavour's instance type;
    transformers 5 now stores that ``impl`` as a dotted-path string. For the duration of the
    call only, hand MLflow an object whose ``__name__`` is the class name it wants.
    """
    import types

    import transformers.pipelines as pipelines

    original = pipelines.check_task

    def check_task(task: str):
        name, meta, options = original(task)
        impl = meta.get("impl")
        if isinstance(impl, str):
            meta = {**meta, "impl": types.SimpleNamespace(__name__=impl.rsplit(".", 1)[-1])}
        return name, meta, options

    pipelines.check_task = check_task
    try:
        yield
    finally:
        pipelines.check_task = original


def _model_dir(stage_dir: Path, what: str) -> Path:
    model_dir = stage_dir / "model"
    if not (model_dir / "config.json").is_file() or not (model_dir / "tokenizer.json").is_file():
        raise RegistryError(
            f"{model_dir}: no {what} model directory (config.json and tokenizer.json expected); "
            f"run the stage that writes {stage_dir} first"
        )
    return model_dir


def _evaluation(evaluation_dir: Path) -> dict[str, Any]:
    path = evaluation_dir / "report.json"
    try:
        report = json.loads(path.read_text())
        return {"lm": dict(report["lm"]), "classifier": dict(report["classifier"])}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RegistryError(
            f"{path}: unreadable evaluation report ({exc}); run `lmforge evaluate` first"
        ) from None


def _log_and_register(
    cfg: Config,
    model_dir: Path,
    *,
    name: str,
    artifact: str,
    task: str,
    example: list[str],
    output_example: Any,
    params: dict[str, Any] | None,
    metrics: dict[str, float],
    tags: dict[str, str],
) -> RegisteredVersion:
    import mlflow
    from mlflow.models import infer_signature

    signature = infer_signature(example, output_example, params=params)
    with _transformers5_checkpoint_compat():
        info = mlflow.transformers.log_model(
            str(model_dir),  # a path: MLflow copies the files instead of loading the model
            name=artifact,
            task=task,
            signature=signature,
            input_example=example,
            pip_requirements=_requirements(),
        )
    version_tags = {**tags, **{METRIC_TAG + k: repr(float(v)) for k, v in metrics.items()}}
    mv = mlflow.register_model(info.model_uri, name, tags=version_tags)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(name, cfg.register.challenger_alias, mv.version)
    return RegisteredVersion(
        name=name,
        version=str(mv.version),
        model_uri=f"models:/{name}/{mv.version}",
        run_id=mlflow.active_run().info.run_id,
        alias=cfg.register.challenger_alias,
    )


def register(
    cfg: Config, pretrained_dir: Path, finetuned_dir: Path, evaluation_dir: Path, out_dir: Path
) -> RegisterResult:
    """Log and register both models as new versions with the alias ``challenger``."""
    import mlflow

    from lmforge import tracking

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # MLflow asks the hub for a model card
    pretrained_dir, finetuned_dir = Path(pretrained_dir), Path(finetuned_dir)
    lm_dir = _model_dir(pretrained_dir, "pretrained")
    clf_dir = _model_dir(finetuned_dir, "fine-tuned")
    report = _evaluation(Path(evaluation_dir))
    labels = json.loads((clf_dir / "config.json").read_text()).get("id2label", {})
    first_label = next(iter(labels.values()), cfg.data.labels[0])

    stage = tracking.stage_run(cfg, "register", sections=("register",))
    with stage as run:
        tags = {
            **tracking.lineage_tags(cfg),
            tracking.PARENT_RUN_TAG: stage.parent_id,
            "lmforge.run_id": run.info.run_id,
        }
        mlflow.log_metrics({f"lm.{k}": float(v) for k, v in report["lm"].items()})
        mlflow.log_metrics({f"classifier.{k}": float(v) for k, v in report["classifier"].items()})
        lm = _log_and_register(
            cfg,
            lm_dir,
            name=cfg.register.lm_model_name,
            artifact="language_model",
            task="text-generation",
            example=list(cfg.evaluate.sample_prompts[:1]) or ["Once upon a time"],
            output_example=["Once upon a time there was"],
            params={"max_new_tokens": cfg.evaluate.sample_max_new_tokens, "do_sample": False},
            metrics=report["lm"],
            tags=tags,
        )
        classifier = _log_and_register(
            cfg,
            clf_dir,
            name=cfg.register.classifier_model_name,
            artifact="classifier",
            task="text-classification",
            example=["Congratulations, you won a free prize! Reply now to claim it."],
            output_example=[{"label": first_label, "score": 0.5}],
            params=None,
            metrics=report["classifier"],
            tags=tags,
        )
        result = RegisterResult(
            run_id=run.info.run_id,
            pipeline_run_id=tracking.pipeline_run_id(cfg),
            lm=lm,
            classifier=classifier,
        )
    with atomic_output_dir(Path(out_dir)) as tmp:
        (tmp / "registered.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


# --------------------------------------------------------------------------------------------
# Promote and roll back
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def promotion_lock(client, name: str, timeout_s: float) -> Iterator[None]:
    """Hold the registry-wide mutex of model ``name`` (see the module docstring)."""
    from mlflow.exceptions import MlflowException

    lock = name + LOCK_SUFFIX
    owner = f"{socket.gethostname()}:{os.getpid()}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.create_registered_model(
                lock,
                tags={"lmforge.lock_owner": owner},
                description=f"Held while a promotion of {name} runs; deleted when it ends.",
            )
            break
        except MlflowException as exc:
            # RESOURCE_ALREADY_EXISTS: held by someone else; anything else (sqlite busy): retry.
            if time.monotonic() > deadline:
                raise RegistryError(
                    f"model {name}: another promotion holds the lock {lock!r} "
                    f"({exc.error_code}); if none is running, delete the registered model "
                    f"{lock!r} (MLflow UI or MlflowClient().delete_registered_model) and retry"
                ) from None
            time.sleep(0.1 + random.random() * 0.2)
    try:
        yield
    finally:
        client.delete_registered_model(lock)


def _metrics(version) -> dict[str, float]:
    return {
        k[len(METRIC_TAG) :]: float(v)
        for k, v in (version.tags or {}).items()
        if k.startswith(METRIC_TAG)
    }


def _alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _history(client, name: str) -> list[str]:
    tags = client.get_registered_model(name).tags or {}
    return [str(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]


def _gate_of(cfg: Config, name: str) -> tuple[str, float]:
    if name == cfg.register.lm_model_name:
        return cfg.register.lm_primary_metric, cfg.register.lm_max_primary
    return cfg.register.primary_metric, cfg.register.min_primary


def _check_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        raise RegistryError(
            f"model {name!r} is not in the registry at {client.tracking_uri}; "
            "run `lmforge register` first or pass --model with a registered name"
        ) from None


def promote(
    cfg: Config, model_name: str, version: str | None = None, rollback: bool = False
) -> PromoteResult:
    """Move ``champion`` to ``version`` (default: the challenger) if it passes the gate.

    Idempotent: promoting the current champion again changes nothing. ``rollback=True`` gives
    ``champion`` back to the version under ``previous``. Refusals raise ``RegistryError``
    naming every failed check with its numbers.
    """
    from lmforge import tracking

    client = tracking.client(cfg)
    _check_model(client, model_name)
    with promotion_lock(client, model_name, cfg.register.lock_timeout_s):
        if rollback:
            return _rollback(cfg, client, model_name)
        return _promote(cfg, client, model_name, version)


def _promote(cfg: Config, client, name: str, version: str | None) -> PromoteResult:
    from mlflow.exceptions import MlflowException

    reg = cfg.register
    if version is None:
        candidate = _alias(client, name, reg.challenger_alias)
        if candidate is None:
            raise RegistryError(
                f"model {name}: no version has the alias {reg.challenger_alias!r}; "
                "run `lmforge register` or pass --version"
            )
    else:
        try:
            candidate = client.get_model_version(name, str(version))
        except MlflowException:
            raise RegistryError(f"model {name}: version {version} does not exist") from None
    champion = _alias(client, name, reg.champion_alias)
    previous = _alias(client, name, reg.previous_alias)
    if champion is not None and str(champion.version) == str(candidate.version):
        return PromoteResult(
            name,
            "unchanged",
            str(champion.version),
            previous and str(previous.version),
            [Check("champion", True, f"version {champion.version} already is the champion")],
        )

    metric, threshold = _gate_of(cfg, name)
    checks = gate(
        metric,
        _metrics(candidate),
        None if champion is None else _metrics(champion),
        threshold,
        reg.promote_margin,
    )
    failed = [c for c in checks if not c.passed]
    if failed:
        reasons = "; ".join(f"{c.name}: {c.detail}" for c in failed)
        raise RegistryError(f"model {name}: version {candidate.version} not promoted: {reasons}")

    # Order matters for a crash in between: `previous` first, then `champion`, then history.
    if champion is not None:
        client.set_registered_model_alias(name, reg.previous_alias, champion.version)
    client.set_registered_model_alias(name, reg.champion_alias, candidate.version)
    history = [*_history(client, name), str(candidate.version)][-50:]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    client.set_model_version_tag(name, candidate.version, "lmforge.promoted_at", _now())
    return PromoteResult(
        name,
        "promoted",
        str(candidate.version),
        None if champion is None else str(champion.version),
        checks,
    )


def _rollback(cfg: Config, client, name: str) -> PromoteResult:
    reg = cfg.register
    champion = _alias(client, name, reg.champion_alias)
    previous = _alias(client, name, reg.previous_alias)
    if previous is None:
        raise RegistryError(
            f"model {name}: no version has the alias {reg.previous_alias!r}: nothing to roll "
            "back to"
        )
    # The champion before `previous`, from the history, becomes the new `previous`.
    history = _history(client, name)
    if champion is not None and history and history[-1] == str(champion.version):
        history.pop()
    while history and history[-1] != str(previous.version):
        history.pop()
    earlier = history[-2] if len(history) >= 2 else None

    client.set_registered_model_alias(name, reg.champion_alias, previous.version)
    if earlier is not None:
        client.set_registered_model_alias(name, reg.previous_alias, earlier)
    else:
        client.delete_registered_model_alias(name, reg.previous_alias)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history or [previous.version]))
    if champion is not None:
        client.set_model_version_tag(name, champion.version, "lmforge.rolled_back_at", _now())
    return PromoteResult(
        name,
        "rolled_back",
        str(previous.version),
        earlier,
        [
            Check(
                "rollback",
                True,
                f"champion {None if champion is None else champion.version} -> {previous.version}",
            )
        ],
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
