"""Follow one pod's log while its job runs, through dropped connections and container restarts.

Lines are requested with their timestamps: after a broken stream the follower asks again from a
little before the last line it printed (``sinceSeconds``) and skips what it already printed, so
a reconnection neither loses nor repeats lines.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from lmforge.launch.retry import is_transient

LOG_READ_TIMEOUT_S = 600.0  # a stream silent this long is treated as broken and re-opened
SINCE_MARGIN_S = 60  # ask from further back than needed: the two clocks may disagree
DRAIN_S = 10.0  # after the job ends, how long the last lines may take to arrive
TAIL_LINES = 200  # kept for the trainer's summary (it is the last thing the master prints)


def split_stamp(line: str) -> tuple[tuple[str, int] | None, str]:
    """``2026-11-28T10:00:15.12Z text`` -> ((seconds, nanoseconds), text); no stamp -> None."""
    stamp, sep, text = line.partition(" ")
    if not sep or not stamp.endswith("Z") or "T" not in stamp:
        return None, line
    whole, _, frac = stamp[:-1].partition(".")
    if len(whole) != 19 or (frac and not frac.isdigit()):
        return None, line
    return (whole, int((frac or "0").ljust(9, "0")[:9])), text  # the API trims trailing zeros


def trainer_summary(lines: list[str]) -> dict[str, Any] | None:
    """The last JSON result ``lmforge pretrain --backend inline`` printed, if any."""
    found, block = None, None
    for line in lines:
        if line == "{":
            block = [line]
        elif block is not None:
            block.append(line)
            if line == "}":
                try:
                    value = json.loads("\n".join(block))
                except ValueError:
                    value = None
                if isinstance(value, dict) and "val_loss" in value:
                    found = value
                block = None
    return found


class PodSource(Protocol):
    """What the follower reads of the job whose pod it follows (``kube.KubeJob``, which imports
    this module: a protocol keeps the dependency one way)."""

    name: str
    namespace: str
    container: str
    timeouts: tuple[float, float]
    core: Any  # kubernetes.client.CoreV1Api
    echo: Callable[[str], None]


class LogFollower(threading.Thread):
    """Streams one pod's logs (``follow=True``) with a ``[pod]`` prefix while the job runs.

    The pod may not exist yet or still be pulling its image (HTTP 400/404): retry. A stream
    that breaks (the API or the kubelet dropped it) is re-opened where it stopped; when the
    container restarts, the follower follows the new one.
    """

    def __init__(self, job: PodSource, pod: str, poll_s: float):
        super().__init__(daemon=True)
        self.job, self.pod, self.poll_s = job, pod, poll_s
        self.prefix = f"[{pod.removeprefix(job.name + '-')}]"
        self._stop_event = threading.Event()
        self._resp = None
        self.streamed = 0  # streams that ended by themselves (the container's output ended)
        self.broken = 0  # streams cut short
        self.last: tuple[str, int] | None = None  # timestamp of the last line printed
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)

    def stop(self, drain: bool = True) -> None:
        """Stop following; with ``drain``, give the open stream a moment to deliver its end."""
        self._stop_event.set()
        self.join(timeout=DRAIN_S if drain else 0.5)
        if self.is_alive() and self._resp is not None:
            self._resp.close()  # unblocks the read; the thread then ends
            self.join(timeout=5)

    def _restart_count(self) -> int | None:
        try:
            pod = self.job.core.read_namespaced_pod(
                self.pod, self.job.namespace, _request_timeout=self.job.timeouts
            )
        except Exception as exc:  # not there yet, or the API is away: ask again next poll
            if not is_transient(exc) and not hasattr(exc, "status"):
                raise
            return None
        statuses = pod.status.container_statuses or []
        return next((s.restart_count for s in statuses if s.name == self.job.container), None)

    def _since_seconds(self) -> int | None:
        if self.last is None:
            return None
        then = datetime.strptime(self.last[0], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
        return max(1, math.ceil((datetime.now(UTC) - then).total_seconds())) + SINCE_MARGIN_S

    def _stream(self, follow: bool) -> bool | None:
        """True: the stream ended by itself; False: it broke; None: it could not be opened."""
        options: dict[str, Any] = {
            "container": self.job.container,
            "follow": follow,
            "timestamps": True,
        }
        since = self._since_seconds()
        if since is not None:
            options["since_seconds"] = since
        try:
            self._resp = self.job.core.read_namespaced_pod_log(
                self.pod,
                self.job.namespace,
                _preload_content=False,
                _request_timeout=(self.job.timeouts[0], LOG_READ_TIMEOUT_S),
                **options,
            )
        except Exception as exc:
            if not is_transient(exc) and not hasattr(exc, "status"):
                raise
            return None
        try:
            for raw in self._resp:
                self._print(raw.decode(errors="replace").rstrip("\n"))
        except Exception as exc:  # cut mid-stream: reconnect from the last line
            if not is_transient(exc) and not isinstance(exc, (OSError, ValueError)):
                raise
            self.broken += 1
            return False
        finally:
            self._resp.release_conn()
        self.streamed += 1
        return True

    def _print(self, line: str) -> None:
        stamp, text = split_stamp(line)
        if stamp is not None:
            if self.last is not None and stamp <= self.last:
                return  # printed before the reconnection
            self.last = stamp
        self.tail.append(text)
        self.job.echo(f"{self.prefix} {text}")

    def run(self) -> None:
        seen, whole = None, False  # restart count whose stream ended by itself
        while not self._stop_event.is_set():
            count = self._restart_count()
            if count is not None and count != seen:
                whole = self._stream(follow=True)
                if whole:
                    seen = count
            self._stop_event.wait(self.poll_s)
        if not whole:  # never followed, or cut short: print what is missing once
            self._stream(follow=False)
