"""Recorded Kubeflow Trainer v2 responses (``k8s_responses/trainjob/``) for ``k8s_fake``'s server.

The TrainJob's API path, its JobSet's pods (found by label, names generated), node 0's log and
the job's events, in the shapes a v2.3.0 cluster answers with.
"""

from __future__ import annotations

from k8s_fake import CORE, NAME, RESPONSES, Reply, recorded

TRAINJOBS = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/lmforge/trainjobs"
NODE0 = f"{NAME}-node-0-0-x7k2p"  # node 0's pod in pods_running.json
NODE0_FAILED = f"{NAME}-node-0-0-b8d3r"  # ... and after the JobSet's last restart


def tj(name: str, **kwargs) -> Reply:
    return recorded(f"trainjob/{name}", **kwargs)


def routes(job_states, extra=None) -> dict[tuple[str, str], list[Reply]]:
    """A TrainJob that goes through ``job_states`` (``trainjob/<state>.json``)."""
    log = tj("node0_log.txt")
    base = {
        ("POST", TRAINJOBS): [Reply(201, (RESPONSES / "trainjob" / "created.json").read_bytes())],
        ("GET", f"{TRAINJOBS}/{NAME}"): [tj(f"{s}.json") for s in job_states],
        ("GET", f"{CORE}/pods"): [tj("pods_running.json")],
        ("GET", f"{CORE}/pods/{NODE0}/log"): [log],
        ("GET", f"{CORE}/pods/{NODE0_FAILED}/log"): [log],
        ("GET", f"{CORE}/events"): [tj("events_failed.json")],
        ("DELETE", f"{TRAINJOBS}/{NAME}"): [recorded("deleted.json")],
    }
    return base | (extra or {})
