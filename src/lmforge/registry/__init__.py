"""MLflow model registry: register both models, promote a challenger, roll back.

- :mod:`~lmforge.registry.registration`: ``register`` logs the language model and the classifier
  with MLflow's transformers flavour, registers a version of each with lineage and metric tags,
  and points ``challenger`` at them.
- :mod:`~lmforge.registry.promotion`: ``promote`` moves ``champion`` to a version that passes the
  gate (:func:`lmforge.metrics.gate`: an absolute threshold, then a margin over the champion);
  the old champion keeps ``previous``, ``--rollback`` gives ``champion`` back to it. Registry
  aliases only (stages are deprecated).
- :mod:`~lmforge.registry.lock`: the registry-wide promotion mutex, a lease that a killed holder
  loses after ``register.lock_lease_s``.
- :mod:`~lmforge.registry.transition`: the state machine that makes an alias move crash-safe
  (recorded target state, idempotent writes, completed by the next call).
- :mod:`~lmforge.registry.aliases`: reading aliases, telling "not set" from a failed read.
- :mod:`~lmforge.registry.connection`: fail fast, naming the tracking URI, when the server is down.
- :mod:`~lmforge.registry.loading`: load a registered classifier with remote code disabled.
"""

from lmforge.metrics import Check, gate, greater_is_better
from lmforge.registry.aliases import HISTORY_TAG, METRIC_TAG
from lmforge.registry.lock import LOCK_SUFFIX, promotion_lock
from lmforge.registry.promotion import PromoteResult, promote
from lmforge.registry.registration import RegisteredVersion, RegisterResult, register

__all__ = [
    "HISTORY_TAG",
    "LOCK_SUFFIX",
    "METRIC_TAG",
    "Check",
    "PromoteResult",
    "RegisterResult",
    "RegisteredVersion",
    "gate",
    "greater_is_better",
    "promote",
    "promotion_lock",
    "register",
]
