"""Reading the registry: aliases, the champion history, the metrics a version carries.

A missing alias is an answer ("no champion yet"); every other failure (a network blip, a
locked database, a server error) is not, and must never be read as one: a promotion that took
a transient error for "no champion" would promote a worse model with no margin check.

MLflow 3.17 answers ``get_model_version_by_alias`` for an alias that is not set with
``INVALID_PARAMETER_VALUE`` ("Registered model alias X not found"), both from the sqlite store
and through a tracking server, and for a model that does not exist with
``RESOURCE_DOES_NOT_EXIST``. ``INVALID_PARAMETER_VALUE`` also means other things, so absence is
confirmed against the registered model's own alias map before it is believed.
"""

from __future__ import annotations

import json

from lmforge.errors import RegistryError
from lmforge.registry.connection import describe

METRIC_TAG = "lmforge.metric."  # + metric name: the evaluation's numbers on each version
HISTORY_TAG = "lmforge.champion_history"  # registered-model tag: JSON list of champion versions
ABSENT_CODES = ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")


def _is_missing_model(exc) -> bool:
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def find_alias(client, name: str, alias: str, *, model_may_be_missing: bool = False):
    """The version under ``alias``; None when the alias is not set.

    With ``model_may_be_missing``, a model that is not registered also gives None (evaluate
    before the first registration). Any other failure raises ``RegistryError`` saying what failed.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if getattr(exc, "error_code", None) not in ABSENT_CODES:
            raise _read_error(client, name, f"alias {alias!r}", exc) from None
        lookup_error = exc
    try:  # confirm: the alias really is not in the model's alias map
        aliases = client.get_registered_model(name).aliases or {}
    except MlflowException as exc:
        if model_may_be_missing and _is_missing_model(exc):
            return None
        raise _read_error(client, name, f"alias {alias!r}", exc) from None
    if alias not in aliases:
        return None
    raise _read_error(client, name, f"alias {alias!r}", lookup_error)


def _read_error(client, name: str, what: str, exc) -> RegistryError:
    return RegistryError(
        f"model {name}: could not read {what} from the registry at {client.tracking_uri} "
        f"({describe(exc)}); nothing was changed: retry when the registry answers"
    )


def check_model(client, name: str) -> None:
    """Raise ``RegistryError`` unless ``name`` is a registered model (saying which failure)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if _is_missing_model(exc):
            raise RegistryError(
                f"model {name!r} is not in the registry at {client.tracking_uri}; "
                "run `lmforge register` first or pass --model with a registered name"
            ) from None
        raise _read_error(client, name, "the registered model", exc) from None


def version_metrics(version) -> dict[str, float]:
    """The evaluation's numbers that ``register`` tagged on ``version``."""
    return {
        k[len(METRIC_TAG) :]: float(v)
        for k, v in (version.tags or {}).items()
        if k.startswith(METRIC_TAG)
    }


def model_tags(client, name: str) -> dict[str, str]:
    return dict(client.get_registered_model(name).tags or {})


def history(tags: dict[str, str]) -> list[str]:
    """The champion versions in promotion order, from the registered model's tags."""
    try:
        return [str(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]
    except (ValueError, TypeError):
        raise RegistryError(
            f"registered-model tag {HISTORY_TAG!r} is not a JSON list ({tags[HISTORY_TAG]!r}); "
            "fix or delete the tag (MLflow UI) and retry"
        ) from None
