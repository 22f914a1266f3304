"""ProcessTree: a local runner finds every process its replicas started, ends them, and never
signals a process that merely got the pid of one it remembered."""

from __future__ import annotations

import signal
import subprocess
import sys

import psutil
from process_fixtures import running

from lmforge.launch.process_tree import ProcessTree, Seen, seen, send

SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]

# Starts a helper in a session of its own that ignores SIGTERM (as torchrun starts a worker that
# is stuck in a collective), says its pid, and waits.
PARENT = """
import subprocess, sys, time
helper = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); "
    "time.sleep(600)"], start_new_session=True, stdout=subprocess.PIPE)
helper.stdout.readline()  # its SIGTERM is ignored from now on
print(helper.pid, flush=True)
time.sleep(600)
"""


def test_a_pid_now_held_by_another_process_is_not_signalled():
    sleeper = subprocess.Popen(SLEEP)
    try:
        now = seen(sleeper.pid)
        assert now is not None
        earlier_owner = Seen(sleeper.pid, now.started - 30)  # what a tree remembered of the pid
        assert not send(earlier_owner, signal.SIGKILL)
        assert sleeper.poll() is None and running([psutil.Process(sleeper.pid)])
        assert send(now, signal.SIGKILL)
        assert sleeper.wait(10) == -signal.SIGKILL
    finally:
        sleeper.kill()
        sleeper.wait()


def test_an_orphan_in_its_own_session_that_ignores_sigterm_is_still_ended():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    helper = None
    try:
        tree = ProcessTree()
        root = tree.add_root(parent.pid)
        helper = psutil.Process(int(parent.stdout.readline()))
        tree.scan()
        assert {p.pid for p in tree.members({root})} == {parent.pid, helper.pid}
        parent.kill()  # the helper is nobody's child now, and in another session
        parent.wait()
        assert running([helper])
        tree.end(grace_s=0.5)  # SIGTERM is ignored: SIGKILL after the grace period
        assert not running([helper]) and tree.members() == []
    finally:
        parent.kill()
        parent.wait()
        if helper is not None and running([helper]):
            helper.kill()
