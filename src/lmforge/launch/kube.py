"""The Kubernetes API side of the launcher: create or adopt, wait, explain, delete.

Uses the official ``kubernetes`` client: PyTorchJobs through ``CustomObjectsApi``, the params
ConfigMap, pods and logs through ``CoreV1Api``. The ServiceAccount of ``k8s/base`` (Role
``lmforge-launcher``) allows exactly these calls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from lmforge.errors import LaunchError
from lmforge.launch.kube_logs import LogFollower
from lmforge.launch.pytorchjob import (
    CONTAINER,
    PARAMS_HASH_LABEL,
    is_valid_job_name,
    params_configmap_name,
)
from lmforge.launch.retry import CALL_ATTEMPTS, RETRY_BASE_S, Backoff, describe, is_transient

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
JOB_LABEL = "training.kubeflow.org/job-name"  # the operator labels every pod of a job with it
# Every call has a bound: a half-open connection must not stall the watch forever.
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 15.0, 60.0


def api_client(host: str | None = None):
    """A client for ``host``, else in-cluster credentials (a pipeline step), else ~/.kube/config.

    urllib3's own retries are off: ``KubeJob`` retries every call itself, with one backoff, the
    server's ``Retry-After`` and a message per failure, and knows when a POST is safe to repeat.
    """
    from kubernetes import client, config

    conf = client.Configuration()
    conf.retries = False
    if host:
        conf.host = host
        return client.ApiClient(conf)
    try:
        config.load_incluster_config(client_configuration=conf)
    except config.ConfigException:
        try:
            config.load_kube_config(client_configuration=conf)
        except (config.ConfigException, OSError) as exc:
            raise LaunchError(
                f"no Kubernetes credentials: not in a cluster and no kubeconfig ({exc}); "
                "set KUBECONFIG or use launch.backend=local"
            ) from None
    return client.ApiClient(conf)


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


class DeadlineExceeded(LaunchError):
    """The job did not end within ``launch.timeout_s``; it is left to its own deadline."""


class KubeJob:
    """One PyTorchJob (and its params ConfigMap) in one namespace.

    The class attributes say which kind of job (``kube_trainjob.TrainJobKube``: a TrainJob).
    Nothing the launcher sees on its side (an API error, its own deadline, an interrupt) deletes
    the job: only a job that reached a terminal condition is deleted (``launch.delete_on_finish``).
    """

    kind, group, version, plural = "PyTorchJob", GROUP, VERSION, PLURAL
    job_label = JOB_LABEL  # the operator's label on every pod of the job
    container = CONTAINER  # the training container of each pod
    succeeded = "Succeeded"  # the terminal condition of success (Failed is the other)

    def __init__(
        self,
        api,
        namespace: str,
        name: str,
        echo: Callable[[str], None] = print,
        retry_base_s: float = RETRY_BASE_S,
    ):
        from kubernetes import client

        if not is_valid_job_name(name):
            raise LaunchError(f"{self.kind} name {name!r} is not a valid DNS-1035 label")
        self.custom, self.core = client.CustomObjectsApi(api), client.CoreV1Api(api)
        self.namespace, self.name, self.echo = namespace, name, echo
        self.retry_base_s = retry_base_s
        self.timeouts = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
        self.host = getattr(getattr(api, "configuration", None), "host", "the API server")
        self.follower: LogFollower | None = None  # of the last wait(); keeps the log's tail

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def log_pod(self) -> str:
        """The pod whose log is followed and named in hints."""
        return f"{self.name}-master-0"

    def state(self, job: dict[str, Any]) -> str:
        return job_state(job)

    def inspect_hint(self) -> str:
        ns, kind = self.namespace, self.kind.lower()
        return (
            f"{self.ref} was left as it is. Inspect it: `kubectl -n {ns} describe {kind} "
            f"{self.name}` and `kubectl -n {ns} logs {self.log_pod}`; a retried step "
            f"with the same run id adopts it; delete it: `kubectl -n {ns} delete {kind} "
            f"{self.name} configmap {params_configmap_name(self.name)}`"
        )

    # -- calls through transient failures -------------------------------------------------

    def _call(self, what: str, fn: Callable[[], Any], deadline: float | None = None) -> Any:
        """``fn()``, retried through transient failures: until ``deadline`` (monotonic) when
        given, else ``CALL_ATTEMPTS`` times. A refusal (4xx) is raised at once."""
        backoff = Backoff(self.retry_base_s)
        while True:
            try:
                result = fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                delay = backoff.next_delay(exc)
                if (
                    backoff.failures >= CALL_ATTEMPTS
                    if deadline is None
                    else time.monotonic() + delay > deadline
                ):
                    raise LaunchError(
                        f"could not {what} {self.namespace}/{self.name}: {describe(exc)} from "
                        f"{self.host} ({backoff.failures} tries); check that the API server is "
                        "reachable (kubectl cluster-info)"
                    ) from None
                self.echo(
                    f"Kubernetes API: {describe(exc)} while trying to {what}; retrying in "
                    f"{delay:.1f}s (the job is not affected)"
                )
                time.sleep(delay)
                continue
            if backoff.failures:
                self.echo(f"Kubernetes API: back after {backoff.failures} failed tries")
            return result

    # -- create / adopt / delete --------------------------------------------------------

    def submit(self, configmap: dict[str, Any], job: dict[str, Any]) -> bool:
        """Create the ConfigMap and the job; adopt a job of the same name. True when adopted.

        A create that timed out may have reached the server: its retry answers 409 and the job
        is adopted, never duplicated.
        """
        from kubernetes.client.exceptions import ApiException

        self._create_params(configmap)
        try:
            self._call(
                f"create the {self.kind}",
                lambda: self.custom.create_namespaced_custom_object(
                    self.group,
                    self.version,
                    self.namespace,
                    self.plural,
                    job,
                    _request_timeout=self.timeouts,
                ),
            )
            self.echo(f"created {self.ref}")
            return False
        except ApiException as exc:
            if exc.status != 409:
                raise self._api_error(f"create the {self.kind}", exc) from None
        existing = self.get()
        self._check_same_params(existing, job)
        self.echo(
            f"{self.ref} already exists ({self.state(existing)}): "
            "adopting it instead of creating a duplicate"
        )
        return True

    def _create_params(self, configmap: dict[str, Any]) -> None:
        """Create the params ConfigMap; one already there must hold these very params.

        It exists when a retried step made it (the same params: kept), or when a cleanup
        deleted a job of this run id but not its ConfigMap (other params: the new job would
        train on them while its params-hash label names these). Such a ConfigMap is replaced
        when no job mounts it (the job of this name: the ConfigMap is named after it), and
        refused when one does. The replacement deletes exactly the version read (uid and
        resourceVersion preconditions): a ConfigMap changed meanwhile is looked at again.
        """
        from kubernetes.client.exceptions import ApiException

        name = configmap["metadata"]["name"]
        for _ in range(3):  # a ConfigMap that changes under us twice is someone else's race
            try:
                self._call(
                    "create the params ConfigMap",
                    lambda: self.core.create_namespaced_config_map(
                        self.namespace, configmap, _request_timeout=self.timeouts
                    ),
                )
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise self._api_error("create the params ConfigMap", exc) from None
            existing = self._read_params(name)
            if existing is None:
                continue  # deleted since: create it again
            if existing.get("data") == configmap.get("data"):
                return  # a retried step created it: these params
            if self._exists():
                raise LaunchError(self._stale_params(name))
            if self._delete_params(existing):
                self.echo(
                    f"ConfigMap {self.namespace}/{name} held other params and no {self.kind} "
                    "mounted it (a partial cleanup): replaced by this launch's"
                )
        raise LaunchError(
            f"could not create ConfigMap {self.namespace}/{name}: it kept changing while this "
            "launch replaced it (another launch with the same run id?); launch again once that "
            "one is done, or with another run id (LMFORGE_PIPELINE_RUN_ID)"
        )

    def _stale_params(self, name: str) -> str:
        ns, kind = self.namespace, self.kind.lower()
        return (
            f"ConfigMap {ns}/{name} holds other params than this launch, and {self.ref}, "
            "which mounts it, exists: this run id was launched before with other params, and "
            "a job of this name would train on the ConfigMap's params while its "
            f"{PARAMS_HASH_LABEL} label names these. Delete both (`kubectl -n {ns} delete "
            f"{kind} {self.name} configmap {name}`) or launch with another run id "
            "(LMFORGE_PIPELINE_RUN_ID)"
        )

    def _read_params(self, name: str) -> dict[str, Any] | None:
        """The ConfigMap as the API has it (``None``: not there)."""
        from kubernetes.client.exceptions import ApiException

        try:
            response = self._call(
                "read the params ConfigMap",
                lambda: self.core.read_namespaced_config_map(
                    name, self.namespace, _preload_content=False, _request_timeout=self.timeouts
                ),
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self._api_error("read the params ConfigMap", exc) from None
        return json.loads(response.data)

    def _delete_params(self, existing: dict[str, Any]) -> bool:
        """Delete the version of the ConfigMap that was read; False when it changed or went."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        meta = existing["metadata"]
        only_this = client.V1Preconditions(
            uid=meta["uid"], resource_version=meta["resourceVersion"]
        )
        try:
            self._call(
                "replace the params ConfigMap",
                lambda: self.core.delete_namespaced_config_map(
                    meta["name"],
                    self.namespace,
                    body=client.V1DeleteOptions(preconditions=only_this),
                    _request_timeout=self.timeouts,
                ),
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise self._api_error("replace the params ConfigMap", exc) from None
        return True

    def _exists(self) -> bool:
        """Whether the job of this name exists."""
        from kubernetes.client.exceptions import ApiException

        try:
            self._call(f"read the {self.kind}", self._read)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise self._api_error(f"read the {self.kind}", exc) from None
        return True

    def _check_same_params(self, existing: dict[str, Any], job: dict[str, Any]) -> None:
        theirs = existing.get("metadata", {}).get("labels", {}).get(PARAMS_HASH_LABEL)
        ours = job.get("metadata", {}).get("labels", {}).get(PARAMS_HASH_LABEL)
        if theirs and ours and theirs != ours:
            raise LaunchError(
                f"{self.ref} already exists but was created with other params "
                f"({PARAMS_HASH_LABEL}={theirs}, this launch has {ours}): it belongs to another "
                f"run. Delete it (`kubectl -n {self.namespace} delete {self.kind.lower()} "
                f"{self.name}`) "
                "or launch with another run id (LMFORGE_PIPELINE_RUN_ID)"
            )

    def _read(self) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            self.group,
            self.version,
            self.namespace,
            self.plural,
            self.name,
            _request_timeout=self.timeouts,
        )

    def get(self, deadline: float | None = None) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call(f"read the {self.kind}", self._read, deadline)
        except ApiException as exc:
            raise self._api_error(f"read the {self.kind}", exc) from None

    def delete(self) -> bool:
        """Delete the job and its ConfigMap; on failure say how to, and return False."""
        from kubernetes.client.exceptions import ApiException

        calls = (
            lambda: self.custom.delete_namespaced_custom_object(
                self.group,
                self.version,
                self.namespace,
                self.plural,
                self.name,
                propagation_policy="Background",  # pods and services go with the job
                _request_timeout=self.timeouts,
            ),
            lambda: self.core.delete_namespaced_config_map(
                params_configmap_name(self.name), self.namespace, _request_timeout=self.timeouts
            ),
        )
        for call in calls:
            try:
                self._call(f"delete the {self.kind}", call)
            except ApiException as exc:
                if exc.status != 404:
                    self.echo(
                        f"{self._api_error(f'delete the {self.kind}', exc)}; {self.inspect_hint()}"
                    )
                    return False
            except LaunchError as exc:  # the API stayed away: the outcome still stands
                self.echo(f"{exc}; {self.inspect_hint()}")
                return False
        self.echo(f"deleted {self.ref}")
        return True

    missing_crd_hint = "is the Kubeflow Training Operator (PyTorchJob CRD) installed?"

    def _api_error(self, what: str, exc) -> LaunchError:
        body = str(exc.body or "")
        hint = ""
        if exc.status == 401:
            hint = (
                "; the credentials were refused: refresh the kubeconfig or the ServiceAccount token"
            )
        elif exc.status == 403:
            hint = "; the ServiceAccount needs the Role in k8s/base/rbac.yaml"
        elif exc.status == 404 and "namespaces" in body and "not found" in body:
            hint = (
                f"; create it (kubectl create namespace {self.namespace}) or set launch.namespace"
            )
        elif exc.status == 404 and self.plural in body:
            hint = f"; {self.missing_crd_hint}"
        elif exc.status == 422:
            hint = (
                "; the API rejected the manifest: check the launch.* settings it names "
                "(`lmforge pretrain --render` prints what was sent)"
            )
        try:  # the API explains itself in a Status object
            detail = json.loads(exc.body)["message"]
        except (TypeError, ValueError, KeyError):
            detail = body.strip()[:500]
        return LaunchError(
            f"could not {what} {self.namespace}/{self.name}: HTTP {exc.status} {exc.reason}: "
            f"{detail}{hint}"
        )

    # -- wait / explain ------------------------------------------------------------------

    def wait(
        self, timeout_s: float, poll_s: float = 5.0, log_pod: str | None = None
    ) -> dict[str, Any]:
        """Poll until the job has succeeded (``succeeded``) or failed and return it (the caller
        decides what a failure means). Transient API failures are waited out;
        ``DeadlineExceeded`` after ``timeout_s``; any other ``LaunchError`` is the launcher's,
        not the job's."""
        follower = self._follower(log_pod, poll_s)
        follower.start()
        self.follower = follower
        deadline = time.monotonic() + timeout_s
        state, last, ended = "Pending", None, False
        try:
            while True:
                try:
                    job = self.get(deadline)
                except LaunchError as exc:
                    if "HTTP 404" in str(exc):
                        raise LaunchError(
                            f"{self.ref} disappeared while the launcher watched it (deleted "
                            "by someone else?); its output, if any, is on the shared volume"
                        ) from None
                    raise
                state = self.state(job)
                if state != last:
                    self.echo(f"{self.ref}: {state}")
                    last = state
                if state in (self.succeeded, "Failed"):
                    ended = True
                    return job
                if time.monotonic() > deadline:
                    raise DeadlineExceeded(
                        f"{self.ref} did not finish within launch.timeout_s={timeout_s}s "
                        f"(still {state}); its runPolicy.activeDeadlineSeconds ends it on the "
                        f"cluster. Inspect it with "
                        f"`kubectl -n {self.namespace} describe {self.kind.lower()} {self.name}`"
                    )
                time.sleep(poll_s)
        finally:
            follower.stop(drain=ended)

    def _follower(self, log_pod: str | None, poll_s: float) -> LogFollower:
        return LogFollower(self, log_pod or self.log_pod, poll_s)

    def pods(self, selector: str | None = None) -> list[dict[str, Any]]:
        try:
            listing = self._call(
                "list the job's pods",
                lambda: self.core.list_namespaced_pod(
                    self.namespace,
                    label_selector=selector or f"{self.job_label}={self.name}",
                    _preload_content=False,
                    _request_timeout=self.timeouts,
                ),
            )
        except Exception:  # the job's own conditions are still worth reporting
            return []
        return json.loads(listing.data).get("items", [])

    def failure_reason(self, job: dict[str, Any]) -> str:
        """The job's Failed condition, then what each pod's container says about it."""
        failed = [
            c for c in job.get("status", {}).get("conditions", []) if c.get("type") == "Failed"
        ]
        cond = failed[-1] if failed else {}
        lines = [
            f"{self.ref} failed: "
            f"{cond.get('reason', 'unknown reason')}: {cond.get('message', '').strip()}"
        ]
        for pod in self.pods():
            pod_name = pod["metadata"]["name"]
            for status in pod.get("status", {}).get("containerStatuses", []) or []:
                if status.get("name") == self.container:
                    line = _describe_container(pod_name, status)
                    if line:
                        lines.append(line)
        lines.extend(self.more_reasons())
        lines.append(f"logs: kubectl -n {self.namespace} logs {self.log_pod} --previous")
        return "\n".join(lines)

    def more_reasons(self) -> list[str]:
        """Lines after the pods' (the TrainJob's events)."""
        return []
