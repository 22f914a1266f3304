"""Register the model its training run logged (``models:/<model_id>``): no weights copied.

``register_trained(cfg, step_dir, logged_name, name, fallback, evaluation, facts)``:

- the LoggedModel is the one the training step named in ``step_dir/metrics.json``
  (``tracking.models``, ``lmforge.lineage.trained_models``) when this store has it: the version's
  ``source`` is ``models:/<model_id>`` and its ``run_id`` the training run;
- a step whose model record is still in its tracking buffer is refused (replay it first: logging
  the folder here would leave two models of the same weights once the buffer is replayed);
- a folder no run of this store logged (written by hand, or by lmforge before models were logged
  where trained, or trained against another store) is logged here, once, in the register run;
- the evaluation's test numbers (``test_<metric>``) go on the model when evaluate did not put
  them there (an SFT report, or a model logged here), so the gate reads them from the model;
- the version's description is the model card (``lmforge.registry.card``); its only lmforge tag
  is the register run (``lmforge.register_run_id``: MLflow's ``run_id`` is the training run).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from lmforge import lineage
from lmforge.config import Config
from lmforge.errors import RegistryError
from lmforge.registry.card import CardFacts, model_card
from lmforge.registry.versions import RegisteredVersion

REGISTER_RUN_TAG = "lmforge.register_run_id"


def _trained_model(client, step_dir: Path, logged_name: str):
    model_id = lineage.trained_models(step_dir).get(logged_name)
    model = lineage.existing_model(client, model_id) if model_id else None
    if model is None and lineage.unsent_models(step_dir):
        raise RegistryError(
            f"{step_dir}: its training run's model {logged_name!r} was never logged (the "
            f"tracking server was away; it waits in {step_dir}/tracking-buffer.jsonl). Fix: "
            f"send it with lmforge.tracking.replay(cfg, {str(step_dir)!r}), rerun the training "
            "step if that cannot work, then rerun `lmforge register`"
        )
    return model


def register_trained(
    cfg: Config,
    step_dir: Path,
    logged_name: str,
    name: str,
    fallback: dict[str, Any],
    evaluation: dict[str, float],
    facts: CardFacts,
) -> RegisteredVersion:
    import mlflow

    from lmforge import tracking
    from lmforge.model_logging import log_model_folder

    client = mlflow.MlflowClient()
    run_id = mlflow.active_run().info.run_id
    model = _trained_model(client, Path(step_dir), logged_name)
    if model is None:  # see the module doc: logged once, here
        spec = {**fallback, "name": logged_name, "path": "model", "metrics": {}}
        spec["record_id"] = uuid.uuid4().hex
        spec["tags"] = {**spec.get("tags", {}), "lmforge.logged_by": "register"}
        exp_id = tracking.experiment_id(cfg, client)
        model = client.get_logged_model(log_model_folder(client, exp_id, run_id, spec, step_dir))
    have = {m.key for m in model.metrics or []}
    tested = {lineage.TEST_PREFIX + k: v for k, v in evaluation.items()}
    missing = {k: v for k, v in tested.items() if k not in have}
    lineage.log_model_metrics(client, run_id, model.model_id, missing, None)
    mv = mlflow.register_model(f"models:/{model.model_id}", name, tags={REGISTER_RUN_TAG: run_id})
    card = model_card(client, client.get_logged_model(model.model_id), facts)
    client.update_model_version(name, mv.version, description=card)
    client.set_registered_model_alias(name, cfg.register.challenger_alias, mv.version)
    return RegisteredVersion(
        name=name,
        version=str(mv.version),
        model_uri=f"models:/{name}/{mv.version}",
        run_id=run_id,
        alias=cfg.register.challenger_alias,
    )
