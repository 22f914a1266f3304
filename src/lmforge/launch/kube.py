"""The Kubernetes API side of the launcher: create or adopt, wait, stream logs, explain, delete.

Uses the official ``kubernetes`` client: PyTorchJobs through ``CustomObjectsApi``, the params
ConfigMap, pods and logs through ``CoreV1Api``. The ServiceAccount of ``k8s/base`` (Role
``lmforge-launcher``) allows exactly these calls.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from lmforge.errors import LaunchError
from lmforge.launch.pytorchjob import CONTAINER, is_valid_job_name

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
JOB_LABEL = "training.kubeflow.org/job-name"  # the operator labels every pod of a job with it


def api_client(host: str | None = None):
    """A client for ``host``, else in-cluster credentials (a pipeline step), else ~/.kube/config."""
    from kubernetes import client, config

    if host:
        conf = client.Configuration()
        conf.host = host
        return client.ApiClient(conf)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise LaunchError(
                f"no Kubernetes credentials: not in a cluster and no kubeconfig ({exc}); "
                "set KUBECONFIG or use launch.backend=local"
            ) from None
    return client.ApiClient()


def job_state(job: dict[str, Any]) -> str:
    """The job's current condition (Created, Running, Restarting, Succeeded, Failed)."""
    conditions = [
        c for c in job.get("status", {}).get("conditions", []) or [] if c.get("status") == "True"
    ]
    for terminal in ("Succeeded", "Failed"):
        if any(c["type"] == terminal for c in conditions):
            return terminal
    return conditions[-1]["type"] if conditions else "Pending"


def _describe_container(pod: str, status: dict[str, Any]) -> str | None:
    """One line for a container that is not simply running: its exit, or why it waits."""
    state = status.get("state") or {}
    last = (status.get("lastState") or {}).get("terminated")
    restarts = status.get("restartCount", 0)
    parts = []
    if state.get("terminated") and state["terminated"].get("exitCode", 0) != 0:
        t = state["terminated"]
        parts.append(f"terminated: {t.get('reason', 'Error')} (exit code {t.get('exitCode')})")
        if t.get("message"):
            parts.append(t["message"].strip())
    elif state.get("waiting"):
        w = state["waiting"]
        parts.append(
            f"waiting: {w.get('reason')}" + (f" ({w['message']})" if w.get("message") else "")
        )
    if last and last.get("exitCode", 0) != 0:
        parts.append(f"last exit: {last.get('reason', 'Error')} (exit code {last.get('exitCode')})")
    if not parts:
        return None
    return f"pod {pod} ({restarts} restarts): " + "; ".join(parts)


class KubeJob:
    """One PyTorchJob (and its params ConfigMap) in one namespace."""

    def __init__(self, api, namespace: str, name: str, echo: Callable[[str], None] = print):
        from kubernetes import client

        if not is_valid_job_name(name):
            raise LaunchError(f"PyTorchJob name {name!r} is not a valid DNS-1035 label")
        self.custom, self.core = client.CustomObjectsApi(api), client.CoreV1Api(api)
        self.namespace, self.name, self.echo = namespace, name, echo

    # -- create / adopt / delete --------------------------------------------------------

    def submit(self, configmap: dict[str, Any], job: dict[str, Any]) -> bool:
        """Create the ConfigMap and the job; adopt a job of the same name. True when adopted."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.create_namespaced_config_map(self.namespace, configmap)
        except ApiException as exc:
            if exc.status != 409:  # exists: a retried step already created it
                raise self._api_error("create the params ConfigMap", exc) from None
        try:
            self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, job)
            self.echo(f"created PyTorchJob {self.namespace}/{self.name}")
            return False
        except ApiException as exc:
            if exc.status != 409:
                raise self._api_error("create the PyTorchJob", exc) from None
        existing = self.get()
        self.echo(
            f"PyTorchJob {self.namespace}/{self.name} already exists ({job_state(existing)}): "
            "adopting it instead of creating a duplicate"
        )
        return True

    def get(self) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name
            )
        except ApiException as exc:
            raise self._api_error("read the PyTorchJob", exc) from None

    def delete(self) -> None:
        from kubernetes.client.exceptions import ApiException

        calls = (
            lambda: self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name,
                propagation_policy="Background",  # pods and services go with the job
            ),
            lambda: self.core.delete_namespaced_config_map(f"{self.name}-params", self.namespace),
        )  # fmt: skip
        for call in calls:
            try:
                call()
            except ApiException as exc:
                if exc.status != 404:
                    raise self._api_error("delete the PyTorchJob", exc) from None
        self.echo(f"deleted PyTorchJob {self.namespace}/{self.name}")

    def _api_error(self, what: str, exc) -> LaunchError:
        hint = ""
        if exc.status in (401, 403):
            hint = "; the ServiceAccount needs the Role in k8s/base/rbac.yaml"
        elif exc.status == 404 and "pytorchjobs" in str(exc.body or ""):
            hint = "; is the Kubeflow Training Operator (PyTorchJob CRD) installed?"
        try:  # the API explains itself in a Status object
            detail = json.loads(exc.body)["message"]
        except (TypeError, ValueError, KeyError):
            detail = str(exc.body or "").strip()[:500]
        return LaunchError(
            f"could not {what} {self.namespace}/{self.name}: HTTP {exc.status} {exc.reason}: "
            f"{detail}{hint}"
        )

    # -- wait / explain ------------------------------------------------------------------

    def wait(
        self, timeout_s: float, poll_s: float = 5.0, log_pod: str | None = None
    ) -> dict[str, Any]:
        """Poll until Succeeded (returns the job) or Failed/timeout (raises, with the reason)."""
        follower = LogFollower(self, log_pod or f"{self.name}-master-0", poll_s)
        follower.start()
        deadline = time.monotonic() + timeout_s
        state, last = "Pending", None
        try:
            while True:
                job = self.get()
                state = job_state(job)
                if state != last:
                    self.echo(f"PyTorchJob {self.namespace}/{self.name}: {state}")
                    last = state
                if state == "Succeeded":
                    return job
                if state == "Failed":
                    raise LaunchError(self.failure_reason(job))
                if time.monotonic() > deadline:
                    raise LaunchError(
                        f"PyTorchJob {self.namespace}/{self.name} did not finish within "
                        f"launch.timeout_s={timeout_s}s (still {state}); inspect it with "
                        f"`kubectl -n {self.namespace} describe pytorchjob {self.name}`"
                    )
                time.sleep(poll_s)
        finally:
            follower.stop()

    def pods(self) -> list[dict[str, Any]]:
        from kubernetes.client.exceptions import ApiException

        try:
            listing = self.core.list_namespaced_pod(
                self.namespace, label_selector=f"{JOB_LABEL}={self.name}", _preload_content=False
            )
        except ApiException:
            return []  # the reason from the job's conditions is still worth reporting
        return json.loads(listing.data).get("items", [])

    def failure_reason(self, job: dict[str, Any]) -> str:
        """The job's Failed condition, then what each pod's container says about it."""
        failed = [
            c for c in job.get("status", {}).get("conditions", []) if c.get("type") == "Failed"
        ]
        cond = failed[-1] if failed else {}
        lines = [
            f"PyTorchJob {self.namespace}/{self.name} failed: "
            f"{cond.get('reason', 'unknown reason')}: {cond.get('message', '').strip()}"
        ]
        for pod in self.pods():
            pod_name = pod["metadata"]["name"]
            for status in pod.get("status", {}).get("containerStatuses", []) or []:
                if status.get("name") == CONTAINER:
                    line = _describe_container(pod_name, status)
                    if line:
                        lines.append(line)
        lines.append(f"logs: kubectl -n {self.namespace} logs {self.name}-master-0 --previous")
        return "\n".join(lines)


class LogFollower(threading.Thread):
    """Streams one pod's logs (``follow=True``) with a ``[pod]`` prefix while the job runs.

    The pod may not exist yet or still be pulling its image (HTTP 400/404): retry. When the
    container restarts, the stream ends; follow the new container.
    """

    def __init__(self, job: KubeJob, pod: str, poll_s: float):
        super().__init__(daemon=True)
        self.job, self.pod, self.poll_s = job, pod, poll_s
        self.prefix = f"[{pod.removeprefix(job.name + '-')}]"
        self._stop_event = threading.Event()
        self.streamed = 0  # container instances whose logs were read

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)

    def _restart_count(self) -> int | None:
        from kubernetes.client.exceptions import ApiException

        try:
            pod = self.job.core.read_namespaced_pod(self.pod, self.job.namespace)
        except ApiException:
            return None
        statuses = pod.status.container_statuses or []
        return next((s.restart_count for s in statuses if s.name == CONTAINER), None)

    def _stream(self, follow: bool) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self.job.core.read_namespaced_pod_log(
                self.pod, self.job.namespace, container=CONTAINER, follow=follow,
                _preload_content=False,
            )  # fmt: skip
        except ApiException:
            return False
        try:
            for raw in resp:
                self.job.echo(f"{self.prefix} {raw.decode(errors='replace').rstrip()}")
        finally:
            resp.release_conn()
        self.streamed += 1
        return True

    def run(self) -> None:
        seen = None
        while not self._stop_event.is_set():
            count = self._restart_count()
            if count is not None and count != seen and self._stream(follow=True):
                seen = count
            self._stop_event.wait(self.poll_s)
        if not self.streamed:  # finished before we could follow: print what it wrote once
            self._stream(follow=False)
