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
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from lmforge.config import Config
from lmforge.errors import RegistryError

PROBE_INTERVAL_S = 0.5  # between probes while the server does not answer (it may be starting)


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _probe(uri: str, timeout_s: float) -> str | None:
    """None when the server answers ``/health``; else why not, in a few words."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return None
    except urllib.error.HTTPError as exc:
        # Any answer below 500 (e.g. 401 behind auth) is a server that is up.
        return None if exc.code < 500 else f"HTTP {exc.code} {exc.reason}"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{type(reason).__name__}: {reason}"


def ensure_reachable(cfg: Config, uri: str) -> None:
    """Raise ``RegistryError`` naming ``uri`` when its server does not answer in time.

    A no-op for the embedded (sqlite) store. Probes until ``tracking.connect_timeout_s`` is
    spent, so a server that is just starting is waited for.
    """
    if not is_server(uri):
        return
    budget = cfg.tracking.connect_timeout_s
    deadline = time.monotonic() + budget
    while True:
        remaining = deadline - time.monotonic()
        why = _probe(uri, max(0.1, min(cfg.tracking.request_timeout_s, remaining)))
        if why is None:
            return
        if time.monotonic() + PROBE_INTERVAL_S >= deadline:
            raise RegistryError(
                f"the MLflow tracking server {uri} cannot be reached ({why}; tried for "
                f"{budget:g}s, tracking.connect_timeout_s); start it, or point "
                "MLFLOW_TRACKING_URI / tracking.tracking_uri at a reachable one"
            )
        time.sleep(PROBE_INTERVAL_S)


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
