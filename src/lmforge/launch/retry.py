"""Which Kubernetes API failures are worth waiting out, and how long to wait before the next try.

A PyTorchJob runs for days; the API server in front of it restarts, rate-limits (429) and drops
connections in that time. Those failures say nothing about the job, so the launcher waits them
out (exponential backoff with jitter, at least what ``Retry-After`` asks) instead of giving up.
"""

from __future__ import annotations

import http.client
import random
import socket
from email.utils import parsedate_to_datetime
from time import time

RETRY_BASE_S = 1.0  # the first wait; each failure in a row doubles it ...
RETRY_CAP_S = 60.0  # ... up to this
RETRY_AFTER_MAX_S = 600.0  # a Retry-After longer than this is a server bug, not advice
# A bounded number of tries for one-off calls (create, delete, list pods): a wrong kubeconfig
# should fail within a minute, not hang. Watching a job retries until the job's deadline.
CALL_ATTEMPTS = 6


def is_transient(exc: BaseException) -> bool:
    """A failure of the API path (connection, timeout, 429, 5xx), not a refusal of the request."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        return exc.status in (408, 429) or (exc.status or 0) >= 500
    return isinstance(
        exc,
        urllib3.exceptions.HTTPError  # MaxRetryError, ProtocolError, ReadTimeoutError, ...
        | ConnectionError
        | socket.timeout
        | http.client.HTTPException,
    )


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (``Retry-After``: seconds or an HTTP date)."""
    headers = getattr(exc, "headers", None) or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    if not value:
        return None
    try:
        return max(0.0, min(float(value), RETRY_AFTER_MAX_S))
    except ValueError:
        pass
    try:
        return max(0.0, min(parsedate_to_datetime(value).timestamp() - time(), RETRY_AFTER_MAX_S))
    except (TypeError, ValueError):
        return None


def describe(exc: BaseException) -> str:
    """One short line for a transient failure (the client's own messages span many lines)."""
    status = getattr(exc, "status", None)
    if status:
        return f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
    reason = getattr(exc, "reason", None)  # MaxRetryError wraps the underlying error
    return f"{type(exc).__name__}: {reason or exc}".splitlines()[0][:200]


class Backoff:
    """Exponential backoff with "equal jitter": half the step fixed, half random, so launchers
    that lost the API at the same moment do not all come back at the same moment."""

    def __init__(self, base_s: float = RETRY_BASE_S, cap_s: float = RETRY_CAP_S):
        self.base_s, self.cap_s, self.failures = base_s, cap_s, 0

    def next_delay(self, exc: BaseException | None = None) -> float:
        step = min(self.cap_s, self.base_s * 2**self.failures)
        self.failures += 1
        delay = step / 2 + random.uniform(0, step / 2)
        asked = retry_after(exc) if exc is not None else None
        return max(delay, asked) if asked is not None else delay

    def reset(self) -> None:
        self.failures = 0
