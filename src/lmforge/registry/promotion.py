"""Promote a challenger to ``champion`` through the gate, or roll back to ``previous``.

Compare-and-set, under the promotion lock (:mod:`lmforge.registry.lock`): complete any
transition a crashed promotion left (:mod:`lmforge.registry.transition`), re-read the champion,
judge the candidate against it (:func:`lmforge.metrics.gate`), check the lock is still ours, then
record and apply the move. Any registry error while reading refuses the promotion and changes
nothing; an error while writing leaves a recorded transition that the next call completes.

A rollback sticks: the version it removed is tagged ``lmforge.rolled_back_at`` (and ``_by``), and
is never promoted again (a pipeline rerun, the deploy step, a crashed rollback's completion) until
a newer version is registered or someone passes ``force``, which is recorded on the version
(``lmforge.forced_by``, ``lmforge.forced_at``) and in the transition. See docs/reliability.md,
"Promotion state machine".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.config import Config
from lmforge.errors import RegistryError
from lmforge.metrics import Check, gate
from lmforge.registry import aliases, provenance, transition
from lmforge.registry.connection import bounded_http, describe, ensure_reachable
from lmforge.registry.lock import Lease, promotion_lock, who

PROMOTED_AT = "lmforge.promoted_at"
ROLLED_BACK_AT = "lmforge.rolled_back_at"  # set on the champion a rollback removed; sticky
ROLLED_BACK_BY = "lmforge.rolled_back_by"
FORCED_BY = "lmforge.forced_by"  # who promoted a rolled-back version with --force
FORCED_AT = "lmforge.forced_at"
FORCED_OVER = "lmforge.forced_over_rollback"  # the rollback that --force overrode


@dataclass
class PromoteResult:
    model: str
    action: str  # promoted | unchanged | rolled_back
    champion: str
    previous: str | None
    checks: list[Check] = field(default_factory=list)
    forced_by: str | None = None  # user@host, when --force promoted a rolled-back version

    def summary(self) -> str:
        """One line: the action, the champion, and why when it is not the plain outcome."""
        notes = [c.detail for c in self.checks if c.name in ("rolled_back", "force", "repair")]
        return f"{self.action}, champion {self.champion}" + "".join(f"; {n}" for n in notes)


def _gate_of(cfg: Config, name: str) -> tuple[str, float]:
    if name == cfg.register.lm_model_name:
        return cfg.register.lm_primary_metric, cfg.register.lm_max_primary
    if name == cfg.register.sft_model_name:
        return cfg.register.sft_primary_metric, cfg.register.sft_min_primary
    return cfg.register.primary_metric, cfg.register.min_primary


def promote(
    cfg: Config,
    model_name: str,
    version: str | None = None,
    rollback: bool = False,
    force: bool = False,
) -> PromoteResult:
    """Move ``champion`` to ``version`` (default: the challenger) if it passes the gate.

    Idempotent: promoting the current champion again changes nothing. ``rollback=True`` gives
    ``champion`` back to the version under ``previous``. A version that was rolled back is not
    promoted again: as the challenger, nothing changes and the result says why; asked for by
    ``version``, it is refused. ``force=True`` promotes it anyway (the gate still applies).
    Refusals raise ``RegistryError`` naming every failed check with its numbers, or the
    registry error and the tracking URI.
    """
    from mlflow.exceptions import MlflowException

    from lmforge import tracking

    if force and rollback:
        raise RegistryError(
            f"model {model_name}: --force overrides an earlier rollback when promoting; it means "
            "nothing with --rollback: drop one of them"
        )

    uri = tracking.tracking_uri(cfg)
    ensure_reachable(cfg, uri)
    reg = cfg.register
    with bounded_http(cfg, cfg.tracking.request_timeout_s):
        try:
            client = tracking.client(cfg)
            aliases.check_model(client, model_name)
            with promotion_lock(client, model_name, reg.lock_timeout_s, reg.lock_lease_s) as lease:
                repaired = transition.repair(client, model_name, reg)
                move = None if repaired is None else repaired[0]
                if rollback and move is not None and move.op == "rollback":
                    # The interrupted call was a rollback too: completing it is this call's work.
                    return _result_of(model_name, move, [repaired[1]])
                if rollback:
                    result = _rollback(cfg, client, model_name, lease)
                else:
                    result = _promote(cfg, client, model_name, version, lease, force)
                if repaired is not None:
                    result.checks.insert(0, repaired[1])
                return result
        except MlflowException as exc:
            raise RegistryError(
                f"model {model_name}: the registry at {uri} failed ({describe(exc)}); "
                "nothing was changed: retry when it answers"
            ) from None


def _result_of(name: str, move: transition.Transition, checks: list[Check]) -> PromoteResult:
    action = "rolled_back" if move.op == "rollback" else "promoted"
    return PromoteResult(name, action, move.champion, move.previous, checks)


def _still_held(lease: Lease, name: str, cfg: Config) -> None:
    if not lease.held():
        raise RegistryError(
            f"model {name}: the promotion lock was taken over while this promotion ran (longer "
            f"than register.lock_lease_s={cfg.register.lock_lease_s:g}s); nothing was changed: "
            "retry, or raise the lease"
        )


def _candidate(client, name: str, version: str | None, alias: str):
    from mlflow.exceptions import MlflowException

    if version is None:
        candidate = aliases.find_alias(client, name, alias)
        if candidate is None:
            raise RegistryError(
                f"model {name}: no version has the alias {alias!r}; "
                "run `lmforge register` or pass --version"
            )
        return candidate
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"model {name}: version {version} does not exist") from None
        raise


def _rolled_back(version) -> str | None:
    """``at <time> by <who>`` when ``version`` was rolled back (and not forced since)."""
    tags = version.tags or {}
    if not tags.get(ROLLED_BACK_AT):
        return None
    by = tags.get(ROLLED_BACK_BY)
    return f"at {tags[ROLLED_BACK_AT]}" + (f" by {by}" if by else "")


def _unchanged(client, name: str, reg, champion, check: Check) -> PromoteResult:
    previous = aliases.find_alias(client, name, reg.previous_alias)
    return PromoteResult(
        name, "unchanged", str(champion.version), previous and str(previous.version), [check]
    )


def _promote(
    cfg: Config, client, name: str, version: str | None, lease: Lease, force: bool
) -> PromoteResult:
    reg = cfg.register
    candidate = _candidate(client, name, version, reg.challenger_alias)
    v = str(candidate.version)
    champion = aliases.find_alias(client, name, reg.champion_alias)
    if champion is not None and str(champion.version) == v:
        return _unchanged(
            client,
            name,
            reg,
            champion,
            Check("champion", True, f"version {v} already is the champion"),
        )
    rolled_back = _rolled_back(candidate)
    if rolled_back and not force:
        why = (
            f"version {v} was rolled back {rolled_back} and is not promoted again until a newer "
            f"version is registered; to promote it anyway: lmforge promote --model {name} "
            f"--version {v} --force"
        )
        if version is None and champion is not None:  # the challenger: nothing new to promote
            return _unchanged(client, name, reg, champion, Check("rolled_back", False, why))
        raise RegistryError(f"model {name}: {why}")

    metric, threshold = _gate_of(cfg, name)
    checks = gate(
        metric,
        provenance.version_metrics(client, candidate),  # MLflow's model metrics, or old tags
        None if champion is None else provenance.version_metrics(client, champion),
        threshold,
        reg.promote_margin,
    )
    failed = [c for c in checks if not c.passed]
    if failed:
        reasons = "; ".join(f"{c.name}: {c.detail}" for c in failed)
        raise RegistryError(f"model {name}: version {candidate.version} not promoted: {reasons}")

    start = None if champion is None else str(champion.version)
    if start is None:  # no champion: whatever `previous` says stays
        kept = aliases.find_alias(client, name, reg.previous_alias)
        new_previous = None if kept is None else str(kept.version)
    else:
        new_previous = start
    history = aliases.history(aliases.model_tags(client, name))
    at = transition.now()
    marks: list[list[str | None]] = [[v, PROMOTED_AT, at]]
    forced_by = None
    if rolled_back:  # and forced: say who and when, on the version; the rollback is overridden
        forced_by = who()
        marks += [
            [v, FORCED_BY, forced_by],
            [v, FORCED_AT, at],
            [v, FORCED_OVER, f"rolled back {rolled_back}"],
            [v, ROLLED_BACK_AT, None],
            [v, ROLLED_BACK_BY, None],
        ]
        checks.append(
            Check(
                "force",
                True,
                f"version {v} was rolled back {rolled_back}; promoted with "
                f"--force by {forced_by} at {at}",
            )
        )
    move = transition.Transition(
        op="promote",
        start=start,
        champion=v,
        previous=new_previous,
        history=[*history, v][-transition.HISTORY_KEPT :],
        marks=marks,
        forced_by=forced_by,
    )
    _still_held(lease, name, cfg)
    transition.carry_out(client, name, move, reg)
    return PromoteResult(name, "promoted", move.champion, start, checks, forced_by)


def _rollback(cfg: Config, client, name: str, lease: Lease) -> PromoteResult:
    reg = cfg.register
    champion = aliases.find_alias(client, name, reg.champion_alias)
    previous = aliases.find_alias(client, name, reg.previous_alias)
    if previous is None:
        raise RegistryError(
            f"model {name}: no version has the alias {reg.previous_alias!r}: nothing to roll "
            "back to"
        )
    # The champion before `previous`, from the history, becomes the new `previous`.
    history = aliases.history(aliases.model_tags(client, name))
    if champion is not None and history and history[-1] == str(champion.version):
        history.pop()
    while history and history[-1] != str(previous.version):
        history.pop()
    earlier = history[-2] if len(history) >= 2 else None
    start = None if champion is None else str(champion.version)
    move = transition.Transition(
        op="rollback",
        start=start,
        champion=str(previous.version),
        previous=earlier,
        history=history or [str(previous.version)],
        # The version rolled back from stays out of `champion` until forced or superseded.
        marks=[]
        if start is None
        else [[start, ROLLED_BACK_AT, transition.now()], [start, ROLLED_BACK_BY, who()]],
    )
    _still_held(lease, name, cfg)
    transition.carry_out(client, name, move, reg)
    sticky = "" if start is None else f"; version {start} is not promoted again unless forced"
    return PromoteResult(
        name,
        "rolled_back",
        move.champion,
        earlier,
        [Check("rollback", True, f"champion {start} -> {previous.version}{sticky}")],
    )
