"""Run a rendered TrainJob on this machine, as Kubeflow Trainer v2 and JobSet would.

What the Trainer, JobSet and the kubelet do, done with processes (``LocalRunner``'s machinery):

- the runtime's ``node`` pod, with the TrainJob's ``runtimePatches`` applied (its params
  ConfigMap), becomes one process group per node, running ``trainer.command`` + ``args``;
- each node gets only what the Trainer injects: ``PET_NNODES``, ``PET_NPROC_PER_NODE``,
  ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` (127.0.0.1), ``PET_MASTER_PORT`` (a free port; 29500 on
  a cluster), plus ``trainer.env``. No RANK, WORLD_SIZE or MASTER_ADDR: torchrun derives them;
- a node's main process ending ends its pod: whatever it started is killed with it (torchrun's
  workers too, which live in sessions of their own: ``ProcessTree``);
- a node that fails fails its Job (``backoffLimit: 0``, pods ``restartPolicy: Never``) and the
  JobSet restarts every node together, up to ``failurePolicy.maxRestarts`` times, then fails
  (``ReachedMaxRestarts``); the new world resumes from the last checkpoint;
- the job is Complete when every node has succeeded.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from lmforge.errors import LaunchError
from lmforge.launch.local_runner import LocalRunner, Replica, threads_per_process, usable_cores
from lmforge.launch.trainjob import CONTAINER, REPLICATED_JOB

# What a pod never inherits from the machine that launches it: a world is the Trainer's to say.
_NOT_INHERITED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


def _by_name(items: list[dict[str, Any]], patch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A strategic merge of two lists keyed by ``name``: patched entries merge, new ones append."""
    merged = {i["name"]: dict(i) for i in items}
    for p in patch:
        base = merged.setdefault(p["name"], {})
        for key, value in p.items():
            if isinstance(value, list) and isinstance(base.get(key), list):
                base[key] = base[key] + value
            else:
                base[key] = value
    return list(merged.values())


def node_pod_spec(trainjob: dict[str, Any], runtime: dict[str, Any]) -> dict[str, Any]:
    """The pod spec every node runs: the runtime's, patched by the TrainJob."""
    spec = trainjob["spec"]
    jobs = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    (node,) = [j for j in jobs if j["name"] == REPLICATED_JOB]
    pod = copy.deepcopy(node["template"]["spec"]["template"]["spec"])
    for patch in spec.get("runtimePatches", []):
        patched = patch.get("trainingRuntimeSpec", {}).get("template", {}).get("spec", {})
        for job in patched.get("replicatedJobs", []):
            if job["name"] != REPLICATED_JOB:
                continue
            extra = job.get("template", {}).get("spec", {}).get("template", {}).get("spec", {})
            pod["volumes"] = _by_name(pod.get("volumes", []), extra.get("volumes", []))
            pod["containers"] = _by_name(pod["containers"], extra.get("containers", []))
    trainer = spec.get("trainer", {})
    (container,) = [c for c in pod["containers"] if c["name"] == CONTAINER]
    for key in ("image", "command", "args"):
        if key in trainer:
            container[key] = list(trainer[key]) if key != "image" else trainer[key]
    names = {e["name"] for e in trainer.get("env", [])}
    container["env"] = [
        e for e in container.get("env", []) if e["name"] not in names
    ] + trainer.get("env", [])
    return pod


class TrainJobRunner(LocalRunner):
    """Execute ``trainjob`` on ``runtime`` (a TrainingRuntime dict) with PVCs mapped to
    ``volumes`` and ``configmaps`` as folders."""

    def __init__(self, trainjob: dict[str, Any], runtime: dict[str, Any], **kwargs: Any):
        super().__init__(trainjob, **kwargs)
        self.runtime = runtime
        failure = runtime["spec"]["template"]["spec"].get("failurePolicy", {})
        self.max_restarts = int(failure.get("maxRestarts", 0))
        self.backoff_limit = self.max_restarts  # shown by LocalRunner's messages
        trainer = trainjob["spec"].get("trainer", {})
        ml = runtime["spec"].get("mlPolicy", {})
        self.nnodes = int(trainer.get("numNodes", ml.get("numNodes", 1)))
        self.nproc = int(trainer.get("numProcPerNode", 1))

    @staticmethod
    def _container(pod: dict[str, Any]) -> dict[str, Any]:
        for c in pod["containers"]:
            if c["name"] == CONTAINER:
                return c
        raise LaunchError(f"TrainingRuntime pod template has no container named {CONTAINER!r}")

    def _trainer_env(self, rank: int, port: int) -> dict[str, str]:
        """The variables Kubeflow Trainer injects into node ``rank``'s container."""
        return {
            "PET_NNODES": str(self.nnodes),
            "PET_NPROC_PER_NODE": str(self.nproc),
            "PET_NODE_RANK": str(rank),
            "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": str(port),
        }

    def _replicas(self, scratch: Path, port: int) -> list[Replica]:
        from lmforge.launch.local_runner import _map_path

        base_env = {
            k: v
            for k, v in os.environ.items()
            if k not in _NOT_INHERITED and not k.startswith(("PET_", "TORCHELASTIC_"))
        }
        base_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base_env.get('PATH', '')}"
        base_env["PYTHONUNBUFFERED"] = "1"
        # Pods on a cluster get their own cores; here every process shares this machine's.
        procs = self.nnodes * self.nproc
        base_env.setdefault("OMP_NUM_THREADS", str(threads_per_process(usable_cores(), procs)))
        pod = node_pod_spec(self.job, self.runtime)
        container = self._container(pod)
        mounts = self._mounts(pod, scratch / REPLICATED_JOB)
        argv = [
            _map_path(a, mounts) for a in container.get("command", []) + container.get("args", [])
        ]
        if not argv:
            raise LaunchError(f"TrainJob {self.name}: the node container has no command")
        argv[0] = shutil.which(argv[0], path=base_env["PATH"]) or argv[0]
        env = dict(base_env)
        env |= {e["name"]: _map_path(str(e.get("value", "")), mounts) for e in container["env"]}
        policy = pod.get("restartPolicy", "Never")
        return [
            Replica("node", rank, rank, policy, argv, env | self._trainer_env(rank, port))
            for rank in range(self.nnodes)
        ]

    def _on_exit(self, r: Replica, code: int, replicas: list[Replica]) -> None:
        """A node failed: its Job fails, and the JobSet restarts all nodes or fails."""
        if self.restarts >= self.max_restarts:
            raise self._fail(
                replicas,
                f"ReachedMaxRestarts: node {r.index} exited with code {code} after "
                f"{self.restarts} JobSet restarts (failurePolicy.maxRestarts={self.max_restarts})",
                r,
            )
        self.restarts += 1
        self.echo(
            f"[{r.name}] exited with code {code}; restarting all {len(replicas)} nodes "
            f"(JobSet restart {self.restarts}/{self.max_restarts})"
        )
        self._end(replicas)
        for peer in replicas:
            peer.succeeded = False
            peer.restarts += 1
            self._start(peer)
