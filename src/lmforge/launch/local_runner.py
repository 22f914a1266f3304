"""Run a rendered PyTorchJob on this machine: one local process per replica.

What the Kubeflow training operator and the kubelet do, done with processes:

- every replica's container command runs with the environment the operator injects
  (MASTER_ADDR=127.0.0.1, MASTER_PORT (a free port), WORLD_SIZE, RANK, PET_NNODES,
  PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_*, or PET_RDZV_* when elastic);
- volumes become local folders: a PVC the folder given for its claim, a ConfigMap a folder
  holding its data files, and paths in the command and env are rewritten to match;
- ``restartPolicy`` and ``runPolicy.backoffLimit`` decide what a failed replica does: restart
  (OnFailure, Always; ExitCode for exit codes >= 128, i.e. killed by a signal) or fail the job;
  ``backoffLimit`` is the number of restarts allowed across all replicas;
- the job succeeds when the Master succeeds (no Master: when every Worker has).

A static world breaks when one replica dies: its peers' collectives fail, so they exit and are
restarted too. A peer of the broken world that stays silent for ``peer_timeout_s`` (stuck in a
collective: no log line) is stopped and restarted, as a cluster's collective timeout would, so
the job converges instead of hanging; one that keeps logging has joined the new world (it was
still in rendezvous) and is left alone. The restarted replicas meet again and resume from the
last checkpoint.

Every process the runner starts ends with it: on success, failure, Ctrl-C or SIGTERM it ends
each replica's main process and everything below it (``ProcessTree``: torchrun's workers live in
sessions of their own), SIGTERM then SIGKILL after ``STOP_GRACE_S``; and a replica whose main
process ends takes whatever it started with it, as a pod's containers do.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.children import signals_ignored, signals_interrupt
from lmforge.cores import threads_per_process, usable_cores
from lmforge.errors import LaunchError
from lmforge.launch.process_tree import ProcessTree, Seen
from lmforge.launch.pytorchjob import CONTAINER

RETRYABLE = {
    "OnFailure": lambda code: True,
    "Always": lambda code: True,
    "ExitCode": lambda code: code >= 128,
    "Never": lambda code: False,
}
STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL: all of a job's processes are gone within 10 s
SCAN_EVERY_S = 0.5  # how often the runner looks for the processes its replicas started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Replica:
    rtype: str  # "master" | "worker", as the operator names pods: <job>-<rtype>-<index>
    index: int
    rank: int  # node rank: master 0, worker i -> i + 1
    restart_policy: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    root: Seen | None = None  # its main process, as the runner's ProcessTree knows it
    pump: threading.Thread | None = None  # copies its output to the log, line by line
    started_at: float = 0.0
    peer_deadline: float | None = None  # a peer of its world died: stop it if silent till then
    restarts: int = 0
    succeeded: bool = False
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=30))

    @property
    def name(self) -> str:
        return f"{self.rtype}-{self.index}"


def _exit_code(returncode: int) -> int:
    """A container's exit code: killed by signal N reads as 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _cores() -> int:
    return usable_cores()


def _die_with_parent() -> None:
    """In the replica, before exec: get SIGKILL when the runner dies (Linux), so a killed
    launcher leaves no replica training on behind it (a pod goes with its job, too)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _map_path(value: str, mounts: list[tuple[str, Path]]) -> str:
    for mount, local in mounts:
        if value == mount or value.startswith(mount + "/"):
            return str(local) + value[len(mount) :]
    return value


class LocalRunner:
    """Execute ``job`` (a PyTorchJob dict) with ``configmaps`` and PVCs mapped to ``volumes``."""

    def __init__(
        self,
        job: dict[str, Any],
        *,
        volumes: dict[str, Path],
        configmaps: list[dict[str, Any]] = (),
        timeout_s: float = 6 * 3600,
        peer_timeout_s: float = 60,
        cwd: Path | None = None,
        echo: Callable[[str], None] = print,
        on_start: Callable[[Replica], None] | None = None,
    ):
        self.job, self.volumes = job, {k: Path(v) for k, v in volumes.items()}
        self.configmaps = {c["metadata"]["name"]: c for c in configmaps}
        self.name = job["metadata"]["name"]
        self.timeout_s, self.peer_timeout_s = timeout_s, peer_timeout_s
        self.cwd = Path(cwd) if cwd else Path.cwd()
        self.echo, self.on_start = echo, on_start
        self.backoff_limit = job["spec"].get("runPolicy", {}).get("backoffLimit")
        self.restarts = 0
        self._lock = threading.Lock()
        self._tree = ProcessTree()

    # -- spec -> processes ----------------------------------------------------------------

    def _mounts(self, pod: dict[str, Any], scratch: Path) -> list[tuple[str, Path]]:
        """(mountPath, local folder) for every volume mount of the replica's container."""
        local: dict[str, Path | None] = {}
        for vol in pod.get("volumes", []):
            if "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                if claim not in self.volumes:
                    raise LaunchError(f"PVC {claim!r}: no local folder given for it")
                local[vol["name"]] = self.volumes[claim]
            elif "configMap" in vol:
                cm_name = vol["configMap"]["name"]
                if cm_name not in self.configmaps:
                    raise LaunchError(f"ConfigMap {cm_name!r}: not among the rendered manifests")
                folder = scratch / vol["name"]
                folder.mkdir(parents=True, exist_ok=True)
                for key, text in self.configmaps[cm_name].get("data", {}).items():
                    (folder / key).write_text(text)
                local[vol["name"]] = folder
            elif vol.get("emptyDir", {}).get("medium") == "Memory":
                local[vol["name"]] = None  # /dev/shm: the host's own
            else:
                local[vol["name"]] = scratch / vol["name"]
                local[vol["name"]].mkdir(parents=True, exist_ok=True)
        container = self._container(pod)
        mounts = [
            (m["mountPath"].rstrip("/"), local[m["name"]])
            for m in container.get("volumeMounts", [])
        ]
        mounts = [(mp, path) for mp, path in mounts if path is not None]
        return sorted(mounts, key=lambda m: -len(m[0]))

    @staticmethod
    def _container(pod: dict[str, Any]) -> dict[str, Any]:
        for c in pod["containers"]:
            if c["name"] == CONTAINER:
                return c
        raise LaunchError(f"PyTorchJob pod template has no container named {CONTAINER!r}")

    def _operator_env(self, rtype: str, rank: int, port: int) -> dict[str, str]:
        """The variables the training operator injects into a replica (v1 PyTorchJob)."""
        spec = self.job["spec"]
        specs = spec["pytorchReplicaSpecs"]
        total = sum(int(s.get("replicas", 1)) for s in specs.values())
        nproc = spec.get("nprocPerNode", "1")
        env = {"PYTHONUNBUFFERED": "1", "PET_NPROC_PER_NODE": str(nproc)}
        if "Master" in specs:
            env |= {
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "PET_MASTER_ADDR": "127.0.0.1",
                "PET_MASTER_PORT": str(port),
                "WORLD_SIZE": str(total * int(nproc)),
                "RANK": str(rank),
                "PET_NODE_RANK": str(rank),
            }
        elastic = spec.get("elasticPolicy")
        if elastic:
            env |= {
                "PET_RDZV_ENDPOINT": f"127.0.0.1:{port}",
                "PET_RDZV_BACKEND": elastic.get("rdzvBackend", "c10d"),
                "PET_RDZV_ID": self.name,
                "PET_NNODES": f"{elastic['minReplicas']}:{elastic['maxReplicas']}",
            }
            if "maxRestarts" in elastic:
                env["PET_MAX_RESTARTS"] = str(elastic["maxRestarts"])
        else:
            env["PET_NNODES"] = str(total)
        return env

    def _replicas(self, scratch: Path, port: int) -> list[Replica]:
        base_env = dict(os.environ)
        # The image's PATH: the package's console scripts (lmforge, torchrun) come first.
        base_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base_env.get('PATH', '')}"
        specs = self.job["spec"]["pytorchReplicaSpecs"]
        # Pods on a cluster get their own cores; here every process shares this machine's.
        procs = sum(int(s.get("replicas", 1)) for s in specs.values())
        procs *= int(self.job["spec"].get("nprocPerNode", "1"))
        base_env.setdefault("OMP_NUM_THREADS", str(threads_per_process(_cores(), procs)))
        replicas = []
        for rtype in ("Master", "Worker"):
            if rtype not in specs:
                continue
            spec = specs[rtype]
            pod = spec["template"]["spec"]
            container = self._container(pod)
            mounts = self._mounts(pod, scratch / rtype.lower())
            argv = [
                _map_path(a, mounts)
                for a in container.get("command", []) + container.get("args", [])
            ]
            if not argv:
                raise LaunchError(f"PyTorchJob {self.name}: {rtype} container has no command")
            exe = shutil.which(argv[0], path=base_env["PATH"])
            argv[0] = exe or argv[0]
            for index in range(int(spec.get("replicas", 1))):
                rank = index + (1 if rtype == "Worker" and "Master" in specs else 0)
                env = dict(base_env)
                env |= {
                    e["name"]: _map_path(str(e.get("value", "")), mounts)
                    for e in container.get("env", [])
                }
                env |= self._operator_env(rtype, rank, port)
                policy = spec.get("restartPolicy", "Never")  # the CRD's default
                replicas.append(Replica(rtype.lower(), index, rank, policy, argv, env))
        return replicas

    # -- processes ------------------------------------------------------------------------

    def _start(self, r: Replica) -> None:
        # start_new_session: its own process group, so stopping it stops torchrun's children too
        r.proc = subprocess.Popen(
            r.argv,
            env=r.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        r.root = self._tree.add_root(r.proc.pid)
        r.started_at, r.peer_deadline = time.monotonic(), None
        r.pump = threading.Thread(target=self._pump, args=(r, r.proc), daemon=True)
        r.pump.start()
        self.echo(f"[{r.name}] started (pid {r.proc.pid}, RANK={r.env.get('RANK', '-')})")
        if self.on_start:
            self.on_start(r)

    def _pump(self, r: Replica, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            r.tail.append(line)
            if r.peer_deadline is not None:  # it is alive, not stuck: push the deadline back
                r.peer_deadline = time.monotonic() + self.peer_timeout_s
            with self._lock:
                self.echo(f"[{r.name}] {line}")

    def _stop(self, r: Replica, grace_s: float = STOP_GRACE_S) -> None:
        self._end([r], grace_s)

    def _end(self, replicas: list[Replica], grace_s: float = STOP_GRACE_S) -> None:
        """End these replicas and every process they started, all at once: SIGTERM, then
        SIGKILL what still runs after ``grace_s``."""
        self._tree.scan()  # first: a signalled process may orphan what it started
        self._signal_groups(replicas, signal.SIGTERM)
        self._tree.end({r.root for r in replicas if r.root}, grace_s=grace_s)
        self._signal_groups(replicas, signal.SIGKILL)
        for r in replicas:
            if r.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    r.proc.wait(1)  # dead by now (a zombie): reap it

    @staticmethod
    def _signal_groups(replicas: list[Replica], sig: int) -> None:
        """Signal each replica's process group (what it started since the last scan, too). Only
        while its leader is unreaped: until then no new process can get its id."""
        for r in replicas:
            if r.proc is not None and r.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(r.proc.pid, sig)

    def _end_of_pod(self, r: Replica) -> None:
        """Its main process ended: its pod ends, and every process in it (a container's
        processes are killed with it), now, before anything restarts."""
        if r.root is not None:
            self._tree.end({r.root}, grace_s=0)

    def _fail(self, replicas: list[Replica], reason: str, culprit: Replica | None) -> LaunchError:
        self._end(replicas)
        tail = ""
        if culprit is not None and culprit.tail:
            tail = f"\nlast lines of {culprit.name}:\n  " + "\n  ".join(culprit.tail)
        return LaunchError(f"PyTorchJob {self.name} (local runner) failed: {reason}{tail}")

    # -- the operator's loop --------------------------------------------------------------

    def _on_exit(self, r: Replica, code: int, replicas: list[Replica]) -> None:
        """A replica ended with ``code`` != 0: restart it (and break its world) or fail the job."""
        if not RETRYABLE[r.restart_policy](code):
            raise self._fail(
                replicas,
                f"replica {r.name} exited with code {code} "
                f"(restartPolicy {r.restart_policy}: not restarted)",
                r,
            )
        if self.backoff_limit is not None and self.restarts >= self.backoff_limit:
            raise self._fail(
                replicas,
                f"BackoffLimitExceeded: replica {r.name} exited with code {code} after "
                f"{self.restarts} restarts (runPolicy.backoffLimit={self.backoff_limit})",
                r,
            )
        now = time.monotonic()
        for peer in replicas:  # peers of the world it was part of lose their collectives
            same_world = peer is not r and peer.started_at <= r.started_at
            running = peer.proc is not None and peer.proc.poll() is None
            if same_world and running and peer.peer_deadline is None:
                peer.peer_deadline = now + self.peer_timeout_s
        self.restarts += 1
        r.restarts += 1
        self.echo(
            f"[{r.name}] exited with code {code}; restarting ({r.restart_policy}, "
            f"restart {self.restarts}/{self.backoff_limit})"
        )
        self._start(r)

    def run(self) -> dict[str, Any]:
        """Run the job to completion; the result names the job and counts restarts. SIGTERM and
        SIGHUP (like Ctrl-C) raise KeyboardInterrupt here, after every process has been ended."""
        with signals_interrupt(), tempfile.TemporaryDirectory(prefix=f"{self.name}-") as tmp:
            port = free_port()
            replicas = self._replicas(Path(tmp), port)
            for r in replicas:  # a pod's /tmp goes with it (torchrun leaves its log folders)
                r.env["TMPDIR"] = str(Path(tmp) / "tmp" / r.name)
                Path(r.env["TMPDIR"]).mkdir(parents=True)
            deadline = time.monotonic() + self.timeout_s
            try:
                for r in replicas:
                    self._start(r)
                self._watch(replicas, deadline)
            finally:
                with signals_ignored():  # a second Ctrl-C must not cut the cleanup short
                    self._end(replicas)
                    self._tree.end(None)  # and any leftover of an earlier incarnation
        return {"job": self.name, "replicas": len(replicas), "restarts": self.restarts}

    def _watch(self, replicas: list[Replica], deadline: float) -> None:
        master = [r for r in replicas if r.rtype == "master"]
        next_scan = 0.0
        while True:
            if time.monotonic() >= next_scan:  # remember workers before anything orphans them
                self._tree.scan()
                next_scan = time.monotonic() + SCAN_EVERY_S
            for r in replicas:
                code = None if r.proc is None else r.proc.poll()
                if r.succeeded or code is None:
                    if code is None and r.peer_deadline and time.monotonic() > r.peer_deadline:
                        self.echo(
                            f"[{r.name}] silent for {self.peer_timeout_s}s after a peer "
                            "died (stuck in a collective): stopping it"
                        )
                        self._stop(r)
                    continue
                self._end_of_pod(r)
                if r.pump is not None:
                    r.pump.join(timeout=5)  # exited: let its last lines reach the log
                if code == 0:
                    r.succeeded = True
                    self.echo(f"[{r.name}] succeeded")
                else:
                    self._on_exit(r, _exit_code(code), replicas)
            done = master if master else replicas
            if all(r.succeeded for r in done):
                self._finish(replicas)
                return
            if time.monotonic() > deadline:
                raise self._fail(
                    replicas, f"did not finish within launch.timeout_s={self.timeout_s}s", None
                )
            time.sleep(0.2)

    def _finish(self, replicas: list[Replica]) -> None:
        """The job succeeded: give the other replicas ``peer_timeout_s`` to end, then stop them."""
        until = time.monotonic() + self.peer_timeout_s
        for r in replicas:
            if r.proc is None or r.succeeded:
                continue
            try:
                r.proc.wait(max(0.0, until - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._stop(r)
