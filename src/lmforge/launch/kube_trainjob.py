"""The Kubernetes side of a TrainJob (Kubeflow Trainer v2): ``KubeJob``'s calls on another kind.

What differs from the PyTorchJob: the API path (``trainer.kubeflow.org/v1alpha1 trainjobs``),
the terminal conditions (``Complete`` / ``Failed``, with reasons such as ``DeadlineExceeded``
or the JobSet's ``ReachedMaxRestarts``), the pods (a JobSet's, labelled
``jobset.sigs.k8s.io/jobset-name``, container ``node``, generated names that change on every
JobSet restart: node 0's pod is looked up by its labels on every poll), and a failure is also
explained by the job's and its JobSet's Warning events. The Role in ``k8s/base/rbac.yaml``
grants these calls and no more.
"""

from __future__ import annotations

import json
from typing import Any

from lmforge.launch.kube import KubeJob
from lmforge.launch.kube_logs import LogFollower
from lmforge.launch.trainjob import CONTAINER, GROUP, JOBSET_LABEL, PLURAL, VERSION, node_pod

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # = PET_NODE_RANK
EVENTS_SHOWN = 8


def trainjob_state(job: dict[str, Any]) -> str:
    """Complete or Failed when ended; else Suspended, Running (a node Job active), Pending."""
    status = job.get("status") or {}
    true = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
    for state in ("Complete", "Failed", "Suspended"):
        if state in true:
            return state
    jobs = status.get("jobsStatus") or []
    if any(j.get("ready", 0) or j.get("succeeded", 0) for j in jobs):
        return "Running"
    return "Pending"


class NodeLogFollower(LogFollower):
    """Follows node 0: the newest pod with completion index 0 of the job's JobSet."""

    def __init__(self, job: TrainJobKube, poll_s: float):
        super().__init__(job, node_pod(job.name), poll_s)
        self.prefix = "[node-0]"

    def _restart_count(self) -> tuple[str, int] | None:
        selector = f"{JOBSET_LABEL}={self.job.name},{COMPLETION_INDEX}=0"
        pods = [  # the selector's labels, checked here too: a pod is never taken for another
            p
            for p in self.job.pods(selector)
            if (p.get("metadata", {}).get("labels") or {}).get(COMPLETION_INDEX) == "0"
        ]
        if not pods:
            return None  # not created yet, or the API is away: ask again next poll
        newest = max(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""))
        self.pod = newest["metadata"]["name"]
        statuses = newest.get("status", {}).get("containerStatuses") or []
        restarts = [s.get("restartCount", 0) for s in statuses if s.get("name") == CONTAINER]
        if not restarts:
            return None  # scheduled, container not started: its log cannot be read yet
        return (self.pod, restarts[0])  # a new pod (JobSet restart) is a new stream


class TrainJobKube(KubeJob):
    """One TrainJob (and its params ConfigMap) in one namespace."""

    kind, group, version, plural = "TrainJob", GROUP, VERSION, PLURAL
    job_label = JOBSET_LABEL  # the JobSet is named as the TrainJob
    container = CONTAINER
    succeeded = "Complete"
    missing_crd_hint = (
        "is Kubeflow Trainer v2 (the TrainJob CRD) installed? Else use launch.api=pytorchjob"
    )

    @property
    def log_pod(self) -> str:
        return f"-l {JOBSET_LABEL}={self.name},{COMPLETION_INDEX}=0"  # kubectl logs takes -l

    def state(self, job: dict[str, Any]) -> str:
        return trainjob_state(job)

    def _follower(self, log_pod: str | None, poll_s: float) -> LogFollower:
        return NodeLogFollower(self, poll_s)

    def more_reasons(self) -> list[str]:
        """The Warning events of the TrainJob and its JobSet (both carry the job's name)."""
        try:
            listing = self._call(
                "list the job's events",
                lambda: self.core.list_namespaced_event(
                    self.namespace,
                    field_selector=f"involvedObject.name={self.name}",
                    _preload_content=False,
                    _request_timeout=self.timeouts,
                ),
            )
            events = json.loads(listing.data).get("items", [])
        except Exception:  # the conditions and the pods are reported all the same
            return []
        warnings = [e for e in events if e.get("type") == "Warning"][-EVENTS_SHOWN:]
        return [
            f"event {e.get('involvedObject', {}).get('kind', '?')} {e.get('reason')}: "
            f"{(e.get('message') or '').strip()}"
            for e in warnings
        ]
