"""Crash-safe alias moves: a promotion or rollback is recorded before it is carried out.

State of a registered model, as lmforge reads it under the promotion lock:

- **settled**: aliases ``champion`` (maybe none yet) and ``previous`` (maybe none), the tag
  ``lmforge.champion_history`` (champion versions in promotion order), no transition tag;
- **in transition**: the registered-model tag ``lmforge.transition`` holds the *target* state
  (JSON: ``op``, ``from`` = the champion it started from, ``champion``, ``previous``,
  ``history``, ``marks`` = version tags to set, or delete when their value is null,
  ``forced_by`` = who passed ``--force``), written before any alias moves.

A move is ``settled --record--> in transition --apply--> settled``, where *apply* sets
``champion``, then ``previous`` (or deletes it), then the history tag, then the marks, then
deletes the transition tag. The marks make a rollback stick: ``lmforge.rolled_back_at`` on the
version that lost ``champion`` keeps :func:`lmforge.registry.promote` from promoting it again
until ``--force`` (whose marks delete it). The full state machine is in docs/reliability.md
("Promotion state machine"). Every write of *apply* is idempotent, so a crash anywhere leaves
either the old settled state (crash before the record: nothing changed) or a recorded
transition, which the next ``promote`` or ``promote --rollback`` completes first thing under
the lock (:func:`repair`): the gate already passed, under the lock, for that target. If the
champion is neither the transition's ``from`` nor its target, someone moved the aliases by hand
since: the record is stale and is dropped, and the aliases are left as they are.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from lmforge.config import RegisterConfig
from lmforge.errors import RegistryError
from lmforge.metrics import Check
from lmforge.registry.aliases import HISTORY_TAG, find_alias, model_tags
from lmforge.registry.connection import describe

TRANSITION_TAG = "lmforge.transition"
HISTORY_KEPT = 50  # entries of the champion history kept on the registered model


@dataclass
class Transition:
    op: str  # promote | rollback
    start: str | None  # the champion it started from (``from`` in the tag)
    champion: str
    previous: str | None
    history: list[str]
    # [version, tag, value]: set on a version when done; a value of None deletes the tag
    marks: list[list[str | None]] = field(default_factory=list)
    forced_by: str | None = None  # user@host who passed --force over a rollback

    def to_json(self) -> str:
        record = asdict(self)
        record["from"] = record.pop("start")
        return json.dumps(record)

    @classmethod
    def from_json(cls, text: str) -> Transition:
        record = json.loads(text)
        marks = record.get("marks")
        if marks is None:  # recorded by an earlier lmforge: one optional "mark"
            marks = [record["mark"]] if record.get("mark") else []
        return cls(
            op=str(record["op"]),
            start=record.get("from"),
            champion=str(record["champion"]),
            previous=record.get("previous"),
            history=[str(v) for v in record.get("history", [])],
            marks=[[str(v), str(tag), value] for v, tag, value in marks],
            forced_by=record.get("forced_by"),
        )

    def describe(self) -> str:
        forced = f", forced by {self.forced_by}" if self.forced_by else ""
        return (
            f"{self.op} of champion {self.start} -> {self.champion} "
            f"(previous {self.previous}{forced})"
        )


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def pending(client, name: str) -> Transition | None:
    text = model_tags(client, name).get(TRANSITION_TAG)
    if text is None:
        return None
    try:
        return Transition.from_json(text)
    except (ValueError, KeyError, TypeError):
        raise RegistryError(
            f"model {name}: the registered-model tag {TRANSITION_TAG!r} is unreadable ({text!r}); "
            "check the aliases by hand, delete the tag (MLflow UI) and retry"
        ) from None


def carry_out(client, name: str, move: Transition, reg: RegisterConfig) -> None:
    """Record ``move`` on the registered model, then apply it."""
    from mlflow.exceptions import MlflowException

    try:
        client.set_registered_model_tag(name, TRANSITION_TAG, move.to_json())
    except MlflowException as exc:
        raise RegistryError(
            f"model {name}: could not record the {move.op} in the registry at "
            f"{client.tracking_uri} ({describe(exc)}); nothing was changed: retry"
        ) from None
    apply(client, name, move, reg)


def apply(client, name: str, move: Transition, reg: RegisterConfig) -> None:
    """The writes of a recorded ``move``, each idempotent; the record goes last."""
    from mlflow.exceptions import MlflowException

    try:
        client.set_registered_model_alias(name, reg.champion_alias, move.champion)
        if move.previous is not None:
            client.set_registered_model_alias(name, reg.previous_alias, move.previous)
        elif find_alias(client, name, reg.previous_alias) is not None:
            client.delete_registered_model_alias(name, reg.previous_alias)
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(move.history))
        for version, tag, value in move.marks:
            if value is None:  # deleting a tag that is gone already is no error: idempotent
                client.delete_model_version_tag(name, version, tag)
            else:
                client.set_model_version_tag(name, version, tag, value)
        client.delete_registered_model_tag(name, TRANSITION_TAG)
    except (MlflowException, RegistryError) as exc:
        raise RegistryError(
            f"model {name}: the {move.describe()} was interrupted ({describe(exc)}); it is "
            f"recorded in the tag {TRANSITION_TAG!r}: the next `lmforge promote` (or "
            "`--rollback`) completes it"
        ) from None


def repair(client, name: str, reg: RegisterConfig) -> tuple[Transition | None, Check] | None:
    """Complete (or drop, when stale) a transition a crashed promotion left; None if none."""
    move = pending(client, name)
    if move is None:
        return None
    champion = find_alias(client, name, reg.champion_alias)
    current = None if champion is None else str(champion.version)
    if current in (move.start, move.champion):
        apply(client, name, move, reg)
        return move, Check("repair", True, f"completed an interrupted {move.describe()}")
    client.delete_registered_model_tag(name, TRANSITION_TAG)
    return None, Check(
        "repair",
        True,
        f"dropped a stale record of a {move.describe()}: the champion is {current} "
        "(aliases moved outside lmforge); aliases left as they are",
    )
