"""The local runner executes the rendered PyTorchJob as processes, as the operator would.

Stand-in replica commands (the container command swapped for a small script) exercise the
runner's contract: the injected environment, the mapped volumes, restartPolicy, backoffLimit,
a stuck peer, the timeout. The gloo stand-in forms a real 2-process world with torch.distributed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from process_fixtures import RUNNER, running, signalable_child, still_running_after, wait_for

from lmforge.config import load_config, load_config_text
from lmforge.errors import LaunchError
from lmforge.launch.local_runner import LocalRunner
from lmforge.launch.pytorchjob import render

# A training stand-in: joins the world from the injected env, all-reduces each step, rank 0
# checkpoints the step atomically; a restarted replica resumes from that checkpoint.
GLOO_STANDIN = """
import json, os, sys, time
from datetime import timedelta
import torch, torch.distributed as dist
out, steps = sys.argv[1], int(sys.argv[2])
dist.init_process_group("gloo", timeout=timedelta(seconds=30))
rank, world = dist.get_rank(), dist.get_world_size()
ckpt = os.path.join(out, "ckpt.json")
start = json.load(open(ckpt))["step"] if os.path.exists(ckpt) else 0
print(f"rank {rank}/{world} resuming at {start}", flush=True)
env = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK",
       "PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PYTHONUNBUFFERED")}
params = open(sys.argv[3]).read()
with open(os.path.join(out, f"env-{rank}.json"), "w") as f:
    json.dump({"env": env, "params": params, "cwd": os.getcwd()}, f)
for step in range(start, steps):
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    if rank == 0:
        with open(ckpt + ".tmp", "w") as f:
            json.dump({"step": step + 1, "sum": t.item(), "world": world}, f)
        os.replace(ckpt + ".tmp", ckpt)
    dist.barrier()
    time.sleep(0.1)
print(f"rank {rank} done", flush=True)
dist.destroy_process_group()
"""

# Behaviour by replica and incarnation, no torch (fast): each run appends to a record file.
SCRIPTED = """
import os, sys, time
out, plan = sys.argv[1], dict(a.split("=") for a in sys.argv[2:])
name = "master" if os.environ["RANK"] == "0" else "worker"
runs = os.path.join(out, f"runs-{name}")
n = len(open(runs).read().splitlines()) if os.path.exists(runs) else 0
open(runs, "a").write(f"{n} {os.getpid()}\\n")
action = plan.get(f"{name}{n}", plan.get(name, "ok"))
print(f"{name} run {n}: {action}", flush=True)
if action == "hang":
    time.sleep(3600)
elif action == "talk":  # healthy and logging (training in the new world)
    for i in range(15):
        print(f"step {i}", flush=True)
        time.sleep(0.1)
elif action.startswith("exit"):
    sys.exit(int(action[4:]))
elif action == "escape":  # a helper in a session of its own, as torchrun starts its workers
    import subprocess
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    open(os.path.join(out, f"escaped-{name}"), "w").close()
    time.sleep(3600)
"""


def make_job(tmp_path: Path, script: str, args: list[str], overrides=()):
    root = tmp_path / "volume"
    (root / "out").mkdir(parents=True)
    script_path = tmp_path / "standin.py"
    script_path.write_text(script)
    cfg = load_config(None, ["launch.api=pytorchjob", *overrides])  # whatever the default api
    configmap, job = render(cfg, root / "tok", root / "out", root=root, run_name="Local Test")
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        container = spec["template"]["spec"]["containers"][0]
        container["command"] = [sys.executable, str(script_path)]
        container["args"] = [f"{cfg.launch.mount_path}/out", *args]
    return cfg, root, configmap, job


def runner(cfg, root, configmap, job, lines, **kwargs):
    kwargs.setdefault("timeout_s", 300)
    kwargs.setdefault("peer_timeout_s", 30)
    return LocalRunner(
        job,
        volumes={cfg.launch.pvc_name: root},
        configmaps=[configmap],
        echo=lines.append,
        **kwargs,
    )


def kill_first_run_of(name: str, ready, killed: list):
    """An ``on_start`` hook: SIGKILL replica ``name``'s first process once ``ready()`` returns
    something (appended to ``killed``), as a node failure or an OOM kill would."""

    def on_start(replica):
        if replica.name != name or replica.restarts:
            return
        proc = replica.proc

        def kill():
            while (seen := ready()) is None:
                time.sleep(0.02)
            killed.append(seen)
            os.kill(proc.pid, signal.SIGKILL)

        threading.Thread(target=kill, daemon=True).start()

    return on_start


def runs(root: Path, name: str) -> int:
    return len((root / "out" / f"runs-{name}").read_text().splitlines())


@pytest.mark.slow
def test_two_replicas_form_a_gloo_world_with_the_operators_env(tmp_path):
    cfg, root, configmap, job = make_job(tmp_path, GLOO_STANDIN, ["5", "/etc/lmforge/params.yaml"])
    lines: list[str] = []
    result = runner(cfg, root, configmap, job, lines).run()
    assert result["restarts"] == 0 and result["replicas"] == 2
    ckpt = json.loads((root / "out" / "ckpt.json").read_text())
    assert ckpt == {"step": 5, "sum": 3.0, "world": 2}
    seen = [json.loads((root / "out" / f"env-{r}.json").read_text()) for r in (0, 1)]
    ports = {s["env"]["MASTER_PORT"] for s in seen}
    assert len(ports) == 1  # one free port, the same for every replica
    for rank, s in enumerate(seen):
        assert s["env"] | {"MASTER_PORT": None} == {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": None,
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "PET_NNODES": "2",
            "PET_NPROC_PER_NODE": "1",
            "PET_NODE_RANK": str(rank),
            "PET_MASTER_ADDR": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
        assert load_config_text(s["params"]) == cfg  # the ConfigMap, mounted as a folder
    assert "[master-0] rank 0/2 resuming at 0" in lines
    assert "[worker-0] rank 1/2 resuming at 0" in lines


@pytest.mark.slow
def test_killed_replica_is_restarted_and_the_world_resumes_from_its_checkpoint(tmp_path):
    cfg, root, configmap, job = make_job(tmp_path, GLOO_STANDIN, ["30", "/etc/lmforge/params.yaml"])
    ckpt = root / "out" / "ckpt.json"

    def checkpointed_step() -> int | None:
        step = json.loads(ckpt.read_text())["step"] if ckpt.exists() else 0
        return step if step >= 5 else None

    killed: list[int] = []
    lines: list[str] = []
    on_start = kill_first_run_of("worker-0", checkpointed_step, killed)
    result = runner(cfg, root, configmap, job, lines, on_start=on_start).run()
    assert killed and result["restarts"] >= 1
    assert any(line.startswith("[worker-0] exited with code 137; restarting") for line in lines)
    resumed = [int(line.rsplit(" ", 1)[1]) for line in lines if "resuming at" in line]
    assert resumed[:2] == [0, 0] and len(resumed) >= 4  # both replicas started again ...
    assert min(resumed[2:]) >= killed[0]  # ... from the checkpoint, not from scratch
    assert json.loads(ckpt.read_text())["step"] == 30


def test_never_policy_fails_the_job_with_the_replicas_reason(tmp_path):
    cfg, root, configmap, job = make_job(
        tmp_path, SCRIPTED, ["worker=exit3", "master=hang"], ["launch.restart_policy=Never"]
    )
    with pytest.raises(
        LaunchError, match=r"worker-0 exited with code 3 \(restartPolicy Never"
    ) as e:
        runner(cfg, root, configmap, job, []).run()
    assert "worker run 0: exit3" in str(e.value)  # the replica's last lines
    assert runs(root, "worker") == 1


def test_backoff_limit_counts_restarts_across_replicas(tmp_path):
    cfg, root, configmap, job = make_job(
        tmp_path, SCRIPTED, ["worker=exit1", "master=hang"], ["launch.backoff_limit=2"]
    )
    with pytest.raises(LaunchError, match=r"BackoffLimitExceeded.*after 2 restarts"):
        runner(cfg, root, configmap, job, [], peer_timeout_s=0.5).run()
    assert runs(root, "worker") + runs(root, "master") == 4  # 2 first runs + 2 restarts


def test_exit_code_policy_restarts_signals_only(tmp_path):
    cfg, root, configmap, job = make_job(
        tmp_path,
        SCRIPTED,
        ["worker0=exit137", "worker1=exit2", "master=hang"],
        ["launch.restart_policy=ExitCode"],
    )
    with pytest.raises(LaunchError, match=r"worker-0 exited with code 2 \(restartPolicy ExitCode"):
        runner(cfg, root, configmap, job, [], peer_timeout_s=0.5).run()
    assert runs(root, "worker") == 2


def test_a_stuck_peer_is_stopped_and_restarted_so_the_job_converges(tmp_path):
    # The worker dies; the master (stuck in a collective that will never complete) is stopped
    # after peer_timeout_s and restarted; the second incarnations succeed.
    cfg, root, configmap, job = make_job(tmp_path, SCRIPTED, ["worker0=exit1", "master0=hang"])
    lines: list[str] = []
    result = runner(cfg, root, configmap, job, lines, peer_timeout_s=0.5).run()
    assert result["restarts"] == 2
    assert (runs(root, "master"), runs(root, "worker")) == (2, 2)
    assert any("[master-0] silent for 0.5s after a peer died" in line for line in lines)


def test_timeout_stops_every_replica(tmp_path):
    cfg, root, configmap, job = make_job(tmp_path, SCRIPTED, ["master=hang", "worker=hang"])
    with pytest.raises(LaunchError, match=r"did not finish within launch.timeout_s=1"):
        runner(cfg, root, configmap, job, [], timeout_s=1).run()
    assert (runs(root, "master"), runs(root, "worker")) == (1, 1)


def test_job_succeeds_when_the_master_does(tmp_path):
    cfg, root, configmap, job = make_job(tmp_path, SCRIPTED, ["worker=hang"])
    lines: list[str] = []
    result = runner(cfg, root, configmap, job, lines, peer_timeout_s=0.5).run()
    assert result["restarts"] == 0 and "[master-0] succeeded" in lines


def test_a_peer_that_keeps_logging_is_left_alone(tmp_path):
    # The master was still in rendezvous when the worker died: it joins the new world and
    # trains on (logging), so the runner must not stop it.
    cfg, root, configmap, job = make_job(tmp_path, SCRIPTED, ["worker0=exit1", "master0=talk"])
    lines: list[str] = []
    result = runner(cfg, root, configmap, job, lines, peer_timeout_s=0.5).run()
    assert result["restarts"] == 1
    assert (runs(root, "master"), runs(root, "worker")) == (1, 2)
    assert not any("silent for" in line for line in lines)


@pytest.mark.slow
def test_elastic_job_forms_its_world_through_torchrun_rendezvous(tmp_path):
    # Workers only, no Master: the rendered container runs torchrun, which reads PET_NNODES=1:2,
    # PET_RDZV_ENDPOINT and PET_RDZV_BACKEND=c10d that the runner injects, as the operator would.
    cfg, root, configmap, job = make_job(
        tmp_path,
        GLOO_STANDIN,
        ["4", "/etc/lmforge/params.yaml"],
        ["launch.elastic_min_nodes=1", "launch.elastic_max_nodes=2"],
    )
    worker = job["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Worker"} and worker["replicas"] == 2
    container = worker["template"]["spec"]["containers"][0]
    container["args"] = ["--no-python", *container["command"], *container["args"]]
    container["command"] = ["torchrun"]
    lines: list[str] = []
    result = runner(cfg, root, configmap, job, lines).run()
    assert result == {"job": job["metadata"]["name"], "replicas": 2, "restarts": 0}
    assert json.loads((root / "out" / "ckpt.json").read_text()) == {
        "step": 4,
        "sum": 3.0,
        "world": 2,
    }
    assert {"[worker-0] succeeded", "[worker-1] succeeded"} <= set(lines)


@pytest.mark.timeout(120)  # were they to outlive it, the wait below would never end
def test_replicas_die_with_a_killed_launcher(tmp_path):
    """A launcher killed outright (no cleanup code runs) takes its replicas with it."""
    _, root, configmap, job = make_job(tmp_path, SCRIPTED, ["master=hang", "worker=hang"])
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"job": job, "configmap": configmap, "root": str(root)}))
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import json, sys; from lmforge.launch.local_runner import LocalRunner; "
                f"d = json.load(open({str(spec)!r})); "
                "LocalRunner(d['job'], volumes={'lmforge-work': d['root']}, "
                "configmaps=[d['configmap']]).run()"
            ),
        ]
    )
    record = [root / "out" / f"runs-{name}" for name in ("master", "worker")]
    while not all(f.exists() and f.read_text().endswith("\n") for f in record):
        assert launcher.poll() is None
        time.sleep(0.05)
    pids = [int(f.read_text().split()[1]) for f in record]
    launcher.kill()
    launcher.wait()
    for pid in pids:
        while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
            time.sleep(0.05)  # SIGKILL from the kernel: gone (or a zombie) in a moment


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_a_launcher_stopped_with_sigterm_ends_what_its_replicas_started(tmp_path):
    """SIGTERM to the launcher ends the replicas and the helpers they started in sessions of
    their own, within 10 s; the launcher exits."""
    cfg, root, configmap, job = make_job(tmp_path, SCRIPTED, ["master=escape", "worker=escape"])
    spec = tmp_path / "spec.json"
    d = {"job": job, "configmap": configmap, "root": str(root), "pvc": cfg.launch.pvc_name}
    spec.write_text(json.dumps(d))
    launcher = signalable_child(RUNNER, [str(spec)], dict(os.environ))
    started: list[psutil.Process] = []
    try:
        for name in ("master", "worker"):
            wait_for(root / "out" / f"escaped-{name}", launcher)
        started = psutil.Process(launcher.pid).children(recursive=True)
        assert len(started) == 4  # 2 replicas, a helper each
        launcher.send_signal(signal.SIGTERM)
        assert still_running_after(started, 10) == []
        launcher.wait(5)
    finally:
        for p in [launcher, *running(started)]:  # whatever a failure leaves
            p.kill()
