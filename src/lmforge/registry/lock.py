"""The promotion lock: a registry-wide mutex that a dead holder cannot keep forever.

The lock of model ``NAME`` is a registered model ``NAME.promotion-lock``: creating it takes the
lock (the store refuses a second model of one name, atomically, for sqlite and servers alike),
deleting it releases it. Its tags say who holds it (token, user, host, pid) and since when
(``lmforge.lock_acquired_at``, seconds since the epoch). A lock older than the lease
(``register.lock_lease_s``) belongs to a holder that was killed: it is taken over.

Taking over must not let two holders in. Deleting a stale lock and creating one's own is a race
(a slow contender could delete the lock a faster one just created), so the right to delete a
given stale lock is itself a create: ``<lock>.takeover-<its token>``. One contender creates that
marker, checks the lock still carries the stale token, deletes it, deletes the marker, and then
competes for the lock like everyone else; the others retry. A marker whose creator died is stale
after the same lease and is taken over the same way. After creating the lock, its holder reads it
back and checks its token; before writing, a promotion checks that it still holds it
(:meth:`Lease.held`), which catches a holder that outlived its lease.

Clocks: the age is computed from the holder's wall clock; machines sharing a registry must
agree within a small fraction of the lease.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from lmforge.errors import RegistryError

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".promotion-lock"
TOKEN_TAG = "lmforge.lock_token"
HOLDER_TAG = "lmforge.lock_owner"  # user@host:pid, for people reading the registry
PID_TAG = "lmforge.lock_pid"
ACQUIRED_TAG = "lmforge.lock_acquired_at"  # seconds since the epoch (the holder's clock)
TAKEOVER = ".takeover-"


@dataclass
class Lease:
    client: object
    lock: str  # the lock model's name
    token: str

    def held(self) -> bool:
        """Whether the lock is still ours (not taken over because we outlived the lease)."""
        current = _read(self.client, self.lock)
        return current is not None and current.get(TOKEN_TAG) == self.token


def who() -> str:
    """``user@host`` of this process, for the registry's records of who did what."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _holder() -> str:
    return f"{who()}:{os.getpid()}"


def _read(client, lock: str) -> dict[str, str] | None:
    """The lock's tags (plus its identity and age); None when nobody holds it."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(lock)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    tags = dict(model.tags or {})
    created_s = (model.creation_timestamp or 0) / 1000.0
    # A lock of an older lmforge has no token and no time: its creation stands in for both.
    tags.setdefault(TOKEN_TAG, f"created-{model.creation_timestamp}")
    tags.setdefault(ACQUIRED_TAG, repr(created_s))
    return tags


def _age_s(tags: dict[str, str]) -> float:
    try:
        return time.time() - float(tags[ACQUIRED_TAG])
    except ValueError:
        return float("inf")  # unreadable: nobody can be relying on it


def _create(client, lock: str, token: str, what: str) -> bool:
    """Try to create the lock model; False when it exists (or the store is busy: retry)."""
    from mlflow.exceptions import MlflowException

    tags = {
        TOKEN_TAG: token,
        HOLDER_TAG: _holder(),
        PID_TAG: str(os.getpid()),
        ACQUIRED_TAG: repr(time.time()),
    }
    try:
        client.create_registered_model(lock, tags=tags, description=what)
        return True
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            log.debug("creating %s: %s (retrying)", lock, exc)  # e.g. sqlite "database is locked"
        return False


def _delete(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def _take_over(client, lock: str, stale: dict[str, str], lease_s: float, depth: int = 0) -> None:
    """Delete the stale lock ``lock`` if we win the right to (see the module docstring)."""
    marker = f"{lock}{TAKEOVER}{stale[TOKEN_TAG]}"
    token = uuid.uuid4().hex
    if not _create(client, marker, token, f"Taking over the stale lock {lock}."):
        existing = _read(client, marker)
        if existing is not None and _age_s(existing) > lease_s and depth < 3:
            _take_over(client, marker, existing, lease_s, depth + 1)  # its creator died too
        return
    try:
        current = _read(client, lock)
        if current is not None and current[TOKEN_TAG] == stale[TOKEN_TAG]:
            log.warning(
                "taking over the promotion lock %s: held by %s since %.0f s, lease %.0f s",
                lock,
                stale.get(HOLDER_TAG, "?"),
                _age_s(stale),
                lease_s,
            )
            _delete(client, lock)
    finally:
        _delete(client, marker)


def acquire(client, name: str, timeout_s: float, lease_s: float) -> Lease:
    """Take the promotion lock of model ``name``, waiting up to ``timeout_s``."""
    lock = name + LOCK_SUFFIX
    token = uuid.uuid4().hex
    what = f"Held while a promotion of {name} runs; deleted when it ends."
    deadline = time.monotonic() + timeout_s
    while True:
        holder = None
        if _create(client, lock, token, what):
            holder = _read(client, lock)
            if holder is not None and holder[TOKEN_TAG] == token:
                return Lease(client, lock, token)
        else:
            holder = _read(client, lock)
            if holder is not None and _age_s(holder) > lease_s:
                _take_over(client, lock, holder, lease_s)
                continue
        if time.monotonic() > deadline:
            raise RegistryError(_held_message(name, lock, holder, lease_s))
        time.sleep(0.1 + random.random() * 0.2)


def _held_message(name: str, lock: str, holder: dict[str, str] | None, lease_s: float) -> str:
    if holder is None:
        who = "the store kept refusing to create it"
    else:
        age = _age_s(holder)
        who = (
            f"held by {holder.get(HOLDER_TAG, 'an unknown holder')} for {age:.0f}s; "
            f"taken over once older than register.lock_lease_s={lease_s:g}s"
        )
    return (
        f"model {name}: another promotion holds the lock {lock!r} ({who}); wait and retry, or, "
        f"if none is running, delete the registered model {lock!r} "
        "(MLflow UI or MlflowClient().delete_registered_model)"
    )


def release(lease: Lease) -> None:
    """Delete the lock if it is still ours; never raises (an unreleased lock expires anyway)."""
    try:
        if lease.held():
            _delete(lease.client, lease.lock)
        else:
            log.warning("promotion lock %s was taken over before release", lease.lock)
    except Exception as exc:  # the step's own outcome matters more; the lease expires
        log.warning("could not release the promotion lock %s: %s", lease.lock, exc)


@contextlib.contextmanager
def promotion_lock(client, name: str, timeout_s: float, lease_s: float = 300.0) -> Iterator[Lease]:
    """Hold the registry-wide mutex of model ``name`` (see the module docstring)."""
    lease = acquire(client, name, timeout_s, lease_s)
    try:
        yield lease
    finally:
        release(lease)
