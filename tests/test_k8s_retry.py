"""Which API failures the launcher waits out, and how long it waits."""

from __future__ import annotations

from email.utils import formatdate
from time import time

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from lmforge.launch.kube_logs import split_stamp, trainer_summary
from lmforge.launch.retry import RETRY_AFTER_MAX_S, Backoff, is_transient, retry_after


def api_error(status: int, headers: dict | None = None) -> ApiException:
    exc = ApiException(status=status, reason="recorded")
    exc.headers = headers
    return exc


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_throttling_and_server_errors_are_transient(status):
    assert is_transient(api_error(status))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_refusals_are_not(status):
    assert not is_transient(api_error(status))


def test_connection_failures_are_transient():
    assert is_transient(urllib3.exceptions.ProtocolError("connection aborted"))
    assert is_transient(ConnectionResetError())
    assert is_transient(urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"))
    assert not is_transient(ValueError("a bug, not the network"))


def test_backoff_doubles_with_jitter_up_to_the_cap():
    backoff = Backoff(base_s=1.0, cap_s=8.0)
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, step in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert step / 2 <= delay <= step


def test_retry_after_is_honoured_in_seconds_or_as_a_date():
    assert retry_after(api_error(429, {"Retry-After": "7"})) == 7.0
    in_a_minute = retry_after(api_error(503, {"Retry-After": formatdate(time() + 60, usegmt=True)}))
    assert 50 < in_a_minute <= 60
    assert retry_after(api_error(429, {"Retry-After": "86400"})) == RETRY_AFTER_MAX_S
    assert retry_after(api_error(429, {"Retry-After": "soon"})) is None
    assert Backoff(base_s=0.01).next_delay(api_error(429, {"Retry-After": "3"})) == 3.0


def test_log_stamps_compare_in_time_order_though_the_api_trims_zeros():
    a, _ = split_stamp("2026-11-28T10:00:15.1Z step 1")
    b, text = split_stamp("2026-11-28T10:00:15.09Z step 0")
    assert b < a and text == "step 0"
    assert split_stamp("no stamp here") == (None, "no stamp here")


def test_the_trainer_summary_is_the_last_result_in_the_log():
    lines = ["{", '  "val_loss": 1.0', "}", "step 5", "{", '  "val_loss": 2.0', "}", "{", "oops"]
    assert trainer_summary(lines) == {"val_loss": 2.0}
    assert trainer_summary(["{", '  "other": 1', "}"]) is None
