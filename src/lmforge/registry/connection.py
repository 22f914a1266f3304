"""Reaching the tracking server: fail fast, naming the URI, instead of retrying for minutes.

MLflow retries each HTTP request with exponential backoff (7 retries, 120 s timeouts by
default): against a dead server a promotion would hang for minutes and then report the failure
of whatever call came first (a missing model, say). :func:`ensure_reachable` probes the server's
``/health`` once the step starts, for at most ``tracking.connect_timeout_s``, and
:func:`bounded_http` caps MLflow's own retries for the calls that follow.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

from lmforge.config import Config
from lmforge.errors import RegistryError


def ensure_reachable(cfg: Config, uri: str) -> None:
    """Raise ``RegistryError`` naming ``uri`` when its server does not answer within
    ``tracking.connect_timeout_s`` (the probe is ``lmforge.tracking.check_reachable``'s; a no-op
    for the embedded sqlite store). A server that is just starting is waited for."""
    from lmforge.tracking import TrackingUnavailable, check_reachable

    try:
        check_reachable(uri, cfg.tracking.connect_timeout_s)
    except TrackingUnavailable as exc:
        raise RegistryError(
            f"{uri} cannot be reached, so neither can its model registry: {exc}"
        ) from None


@contextlib.contextmanager
def bounded_http(cfg: Config, timeout_s: float | None = None) -> Iterator[None]:
    """Cap MLflow's HTTP retries (``tracking.max_retries``) and, if given, each request's timeout.

    Variables the user set themselves win. Restored on exit (they are process-wide).
    """
    wanted = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(cfg.tracking.max_retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }
    if timeout_s is not None:
        wanted["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.ceil(timeout_s)))  # an int there
    added = [key for key in wanted if key not in os.environ]
    for key in added:
        os.environ[key] = wanted[key]
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def describe(exc: BaseException) -> str:
    """An MLflow error in one line: its code and the first line of its message."""
    code = getattr(exc, "error_code", None)
    message = str(getattr(exc, "message", None) or exc).strip().splitlines()
    first = message[0] if message else type(exc).__name__
    return f"{code}: {first}" if code and not first.startswith(str(code)) else first
