"""MLflow on the training path: an outage never stops, or even slows, training.

API (rank 0; other ranks get ``NullTracker`` with the same methods)::

    tracker = TrainingTracker(cfg, "pretrain", ("model", "pretrain"), out_dir)
    tracker.log_params({...}); tracker.log_metrics(row, step); tracker.log_artifact(path, "plots")
    tracker.log_inputs([tracking.dataset(path, name, "training"), ...])  # DVC-digested inputs
    tracker.log_model({"name": ..., "path": "model", ...})  # lmforge.model_logging's spec
    summary = tracker.close("FINISHED")   # what was sent, what is still unsent
    replay_buffer(cfg, out_dir)            # later: send what was buffered (``tracking.replay``)

The training thread only puts records on a queue; one background thread sends them in order,
each request bounded by ``tracking.request_timeout_s`` with ``tracking.max_retries`` retries
(MLflow's own ``MLFLOW_HTTP_REQUEST_*`` knobs, set for the step's duration). A record that cannot
be sent, and every record after it (order matters: the run must exist before its metrics), is
appended to ``out_dir/tracking-buffer.jsonl``. While offline the thread retries every
``RECONNECT_S`` (one health request) and replays the buffer once the server answers; at the end
it tries once more, then leaves the buffer for ``replay``.

An unreachable server at start is the same case: the run's creation is the first buffered record,
so the run is created when the server is back (or by ``replay``), with the tags and start time
recorded at the start. A request the server *rejects* (4xx) is dropped and listed, never retried.

With ``LMFORGE_METRICS_STDOUT=1`` (a Katib trial's template sets it) every metrics record is also
printed as one ``step=N name=value ...`` line on stdout, the format Katib's StdOut collector parses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from lmforge import lineage, tracking
from lmforge.config import Config

log = logging.getLogger(__name__)

BUFFER_FILE = "tracking-buffer.jsonl"
RECONNECT_S = 10.0  # while offline, how often the tracker asks the server whether it is back
# Artifact uploads (a model folder) legitimately take longer than one metrics request.
ARTIFACT_TIMEOUT_FACTOR = 12
_CLOSE = object()


class Unsendable(Exception):
    """The store refused a record for good (it is dropped and listed, not retried)."""


# ------------------------------------------------------------------------------ sending


class _Sender:
    """Sends records to the store in order; knows the run (and parent) they belong to."""

    def __init__(self, cfg: Config, uri: str, out_dir: Path):
        self.cfg, self.uri, self.out_dir = cfg, uri, out_dir
        self.run_id: str | None = None
        self.parent_id: str | None = None
        self.models: dict[str, str] = {}  # LoggedModels sent: name -> model_id
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import mlflow

            self._client = mlflow.MlflowClient(tracking_uri=self.uri)
        return self._client

    def answers(self) -> bool:
        if not tracking.is_server(self.uri):
            return True
        return tracking.server_answers(self.uri, self.cfg.tracking.request_timeout_s) is None

    def send(self, rec: dict[str, Any]) -> None:
        """Send one record; ``Unsendable`` when refused for good, anything else is transient."""
        try:
            self._send(rec)
        except Unsendable:
            raise
        except Exception as exc:
            if _is_rejection(exc):
                raise Unsendable(f"{rec['op']}: {str(exc).splitlines()[0][:300]}") from exc
            raise

    def _send(self, rec: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param

        op = rec["op"]
        run_id = rec.get("run_id") or self.run_id
        if op == "start":
            self._start(rec)
        elif run_id is None:
            raise Unsendable(f"{op}: no run to log to (its creation was rejected)")
        elif op == "params":
            params = [Param(k, v) for k, v in rec["params"].items()]
            self.client.log_batch(run_id, params=params, synchronous=True)
        elif op == "metrics":
            ts, step = rec["timestamp"], rec["step"]
            metrics = [Metric(k, v, ts, step) for k, v in rec["metrics"].items()]
            self.client.log_batch(run_id, metrics=metrics, synchronous=True)
        elif op == "artifact":
            self._artifact(run_id, rec)
        elif op == "datasets":
            lineage.log_datasets(self.client, run_id, rec["datasets"])
        elif op == "model":
            self._model(run_id, rec["spec"])
        elif op == "end":
            self.client.set_terminated(run_id, rec["status"], end_time=rec["timestamp"])
            parent = rec.get("parent_id") or self.parent_id
            if parent:
                self.client.set_terminated(parent, rec["status"], end_time=rec["timestamp"])
        else:
            raise Unsendable(f"unknown record {op!r}")

    def _start(self, rec: dict[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        # Tags were taken at the start (git commit, KFP ids): a replay elsewhere keeps them.
        parent = tracking.parent_run_id(self.cfg, self.client, rec["parent_tags"])
        tags = {**rec["tags"], tracking.PARENT_RUN_TAG: parent, MLFLOW_PARENT_RUN_ID: parent}
        exp_id = tracking.experiment_id(self.cfg, self.client)
        run = self.client.create_run(
            exp_id, start_time=rec["timestamp"], tags=tags, run_name=rec["stage"]
        )
        self.run_id, self.parent_id = run.info.run_id, parent
        params = [Param(k, v) for k, v in rec["params"].items()]
        self.client.log_batch(self.run_id, params=params, synchronous=True)

    def _artifact(self, run_id: str, rec: dict[str, Any]) -> None:
        path = self.out_dir / rec["path"]
        if not path.exists():
            raise Unsendable(f"artifact {rec['path']}: no longer in {self.out_dir}")
        timeout = self.cfg.tracking.request_timeout_s * ARTIFACT_TIMEOUT_FACTOR
        with http_limits(self.cfg, timeout_s=timeout):
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), rec.get("artifact_path"))
            else:
                self.client.log_artifact(run_id, str(path), rec.get("artifact_path"))

    def _model(self, run_id: str, spec: dict[str, Any]) -> None:
        from lmforge.model_logging import log_model_folder

        exp_id = tracking.experiment_id(self.cfg, self.client)
        timeout = self.cfg.tracking.request_timeout_s * ARTIFACT_TIMEOUT_FACTOR
        with http_limits(self.cfg, timeout_s=timeout):
            self.models[spec["name"]] = log_model_folder(
                self.client, exp_id, run_id, spec, self.out_dir
            )


def _is_rejection(exc: BaseException) -> bool:
    """A 4xx answer (bad value, run deleted, no permission): resending cannot help."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return False
    status = exc.get_http_status_code()
    return 400 <= status < 500 and status != 429


_HTTP_ENV = (
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
)


@contextlib.contextmanager
def http_limits(cfg: Config, timeout_s: float | None = None):
    """MLflow's HTTP client reads these per request (defaults: 120 s, 7 retries, factor 2: minutes
    per request against a dead server); bound them while the tracker works."""
    saved = {k: os.environ.get(k) for k in _HTTP_ENV}
    timeout = cfg.tracking.request_timeout_s if timeout_s is None else timeout_s
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.ceil(timeout)))  # an int there
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.tracking.max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ------------------------------------------------------------------------------ the buffer


class _Buffer:
    """Records not yet sent, oldest first, in ``out_dir/tracking-buffer.jsonl``."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / BUFFER_FILE

    def append(self, rec: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        lines = self.path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def replace(self, records: list[dict[str, Any]]) -> None:
        if not records:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        os.replace(tmp, self.path)


def _flush(sender: _Sender, buffer: _Buffer, rejected: list[str]) -> tuple[int, bool]:
    """Send the buffered records in order: ``(sent, all sent)``; the rest stays buffered."""
    records = buffer.read()
    sent = 0
    for i, rec in enumerate(records):
        try:
            sender.send(rec)
        except Unsendable as exc:
            rejected.append(str(exc))
        except Exception as exc:
            log.info("tracking: still unreachable (%s); %d records buffered", exc, len(records) - i)
            buffer.replace(records[i:])
            return sent, False
        else:
            sent += 1
        if rec["op"] == "start":  # later records were stamped before the run existed
            for later in records[i + 1 :]:
                later["run_id"] = later.get("run_id") or sender.run_id
                later["parent_id"] = later.get("parent_id") or sender.parent_id
    buffer.replace([])
    return sent, True


def _summary(uri, sender, sent, unsent, rejected, buffer, out_dir) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for rec in unsent:
        counts[rec["op"]] = counts.get(rec["op"], 0) + 1
    out: dict[str, Any] = {
        "uri": uri,
        "run_id": sender.run_id,
        "sent": sent,
        "unsent": len(unsent),
        "unsent_by_kind": counts,
        "rejected": rejected,
        "models": dict(sender.models),  # evaluate and register find the trained models here
    }
    if unsent:
        out["buffer"] = str(buffer.path)
        out["replay"] = f"lmforge.tracking.replay(cfg, {str(out_dir)!r}) once {uri} answers"
    return out


# ------------------------------------------------------------------------------ the tracker

METRICS_STDOUT_ENV = "LMFORGE_METRICS_STDOUT"


# Katib's marker of a metric with no value (consts.UnavailableMetricValue): a trial whose latest
# objective reads so ends MetricsUnavailable, not Succeeded.
UNAVAILABLE = "unavailable"


def metrics_line(values: dict[str, float], step: int) -> str:
    """``step=N a=1.5 b=2e-05``: Katib's StdOut filter (``lmforge.sweep.katib.METRICS_FILTER``)
    reads each pair. A ``/`` in a name (``baseline/val_loss``) becomes ``-``, so no name is read
    as the tail of another. A non-finite value (a diverged final evaluation) is printed as
    ``unavailable``, never left out: left out, the latest value Katib kept would be an earlier,
    finite one, and the trial would report it as its result."""
    shown = {
        k.replace("/", "-"): repr(v) if math.isfinite(v) else UNAVAILABLE for k, v in values.items()
    }
    pairs = [f"{k}={v}" for k, v in shown.items()]
    return " ".join([f"step={int(step)}", *pairs])


class TrainingTracker:
    """A step's MLflow run, logged from a background thread, buffered while the store is away."""

    def __init__(self, cfg: Config, stage: str, sections: tuple[str, ...], out_dir: Path):
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.uri = tracking.tracking_uri(cfg)  # in a pod without a URI: a ConfigError, now
        import mlflow

        mlflow.set_tracking_uri(self.uri)  # as the strict stages do: later fluent calls agree
        self._sender = _Sender(cfg, self.uri, self.out_dir)
        self._buffer = _Buffer(self.out_dir)
        self._queue: queue.Queue = queue.Queue()
        self._sent, self._rejected = 0, []
        self._offline = self._buffer.path.is_file()  # a previous attempt's records come first
        self._next_try = 0.0
        self._limits = http_limits(cfg)
        self._limits.__enter__()
        self._put(
            "start",
            stage=stage,
            tags={**_context_tags(), **tracking.stage_tags(cfg, stage)},
            parent_tags=tracking.parent_tags(cfg),
            params=tracking.section_params(cfg, sections),
        )
        self._thread = threading.Thread(target=self._work, name="lmforge-tracking", daemon=True)
        self._thread.start()
        self._summary: dict[str, Any] | None = None

    # the training thread's side: never blocks on the network
    def log_params(self, params: dict[str, Any]) -> None:
        self._put("params", params={k: str(v)[:500] for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        if os.environ.get(METRICS_STDOUT_ENV) == "1":
            print(metrics_line(values, step), flush=True)
        self._put("metrics", metrics=values, step=int(step))

    def step_logger(self, prefix: str = ""):
        """``fit``'s ``on_log``: each logged row as metrics at its step, names prefixed."""

        def on_log(step: int, row: dict[str, float]) -> None:
            self.log_metrics({prefix + k: v for k, v in row.items()}, step)

        return on_log

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """A file or folder inside ``out_dir`` (the buffer refers to it by its relative path)."""
        rel = Path(path).resolve().relative_to(self.out_dir.resolve())
        self._put("artifact", path=str(rel), artifact_path=artifact_path)

    def log_inputs(self, datasets: list[dict[str, Any]]) -> None:
        """Datasets (``tracking.dataset`` records) the run reads: MLflow run inputs."""
        self._put("datasets", datasets=datasets)

    def log_model(self, spec: dict[str, Any]) -> None:
        """A model folder inside ``out_dir`` as a LoggedModel of this run (``model_logging``)."""
        self._put("model", spec={**spec, "record_id": spec.get("record_id") or uuid.uuid4().hex})

    def close(self, status: str = "FINISHED") -> dict[str, Any]:
        """End the run; wait for the thread (bounded: each request is). Returns the summary."""
        if self._summary is not None:
            return self._summary
        self._put("end", status=status)
        self._queue.put(_CLOSE)
        self._thread.join()
        self._limits.__exit__(None, None, None)
        unsent = self._buffer.read()
        self._summary = _summary(
            self.uri, self._sender, self._sent, unsent, self._rejected, self._buffer, self.out_dir
        )
        if unsent:
            log.warning(
                "tracking: %d records not logged to %s (buffered in %s; replay with "
                "lmforge.tracking.replay)",
                len(unsent),
                self.uri,
                self._buffer.path,
            )
        return self._summary

    def _put(self, op: str, **fields: Any) -> None:
        self._queue.put({"op": op, "timestamp": int(time.time() * 1000), **fields})

    # the background thread's side
    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=1.0 if self._offline else None)
            except queue.Empty:
                self._maybe_reconnect()
                continue
            if item is _CLOSE:
                break
            if self._offline:
                self._stash(item)
                self._maybe_reconnect()
                continue
            try:
                self._sender.send(item)
                self._sent += 1
            except Unsendable as exc:
                self._rejected.append(str(exc))
            except Exception as exc:
                log.warning(
                    "tracking: %s unreachable (%s); buffering in %s",
                    self.uri,
                    str(exc).splitlines()[0][:200],
                    self._buffer.path,
                )
                self._offline, self._next_try = True, time.monotonic() + RECONNECT_S
                self._stash(item)
        if self._offline:  # one last try at the end; the buffer stays if it fails
            self._next_try = 0.0
            self._maybe_reconnect()

    def _stash(self, rec: dict[str, Any]) -> None:
        self._buffer.append(
            {**rec, "run_id": self._sender.run_id, "parent_id": self._sender.parent_id}
        )

    def _maybe_reconnect(self) -> None:
        if time.monotonic() < self._next_try:
            return
        self._next_try = time.monotonic() + RECONNECT_S
        if not self._sender.answers():
            return
        sent, done = _flush(self._sender, self._buffer, self._rejected)
        self._sent += sent
        self._offline = not done
        if done:
            log.info("tracking: %s is back; %d buffered records sent", self.uri, sent)


class NullTracker:
    """What ranks other than 0 get: the same methods, nothing logged."""

    uri = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        pass

    def step_logger(self, prefix: str = ""):
        return None

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_inputs(self, datasets: list[dict[str, Any]]) -> None:
        pass

    def log_model(self, spec: dict[str, Any]) -> None:
        pass

    def close(self, status: str = "FINISHED") -> dict[str, Any]:
        return {}


def _context_tags() -> dict[str, str]:
    """MLflow's own run-context tags (source, user, git) as ``mlflow.start_run`` would set."""
    from mlflow.tracking.context.registry import resolve_tags

    return {k: str(v) for k, v in resolve_tags({}).items()}


def replay_buffer(cfg: Config, out_dir: Path) -> dict[str, Any]:
    """Send ``out_dir``'s buffered records now (``lmforge.tracking.replay``); the summary says
    what is still unsent (then the buffer keeps it for another try)."""
    out_dir = Path(out_dir)
    uri = tracking.tracking_uri(cfg)
    sender, buffer, rejected = _Sender(cfg, uri, out_dir), _Buffer(out_dir), []
    if not buffer.path.is_file():
        return _summary(uri, sender, 0, [], rejected, buffer, out_dir)
    with http_limits(cfg):
        sent = 0
        if sender.answers():
            sent, _ = _flush(sender, buffer, rejected)
    return _summary(uri, sender, sent, buffer.read(), rejected, buffer, out_dir)
