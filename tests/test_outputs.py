"""Atomic output folders and JSON files under concurrent and killed writers (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from process_fixtures import python_child, wait_for

from lmforge.errors import LmforgeError
from lmforge.outputs import OWNER_FILE, OutputError, atomic_output_dir, this_owner, write_json

SRC = Path(__file__).resolve().parents[1] / "src"

# A writer: waits for `start`, fills the folder (touching `inside` there), waits for `go`.
WRITER = """
import sys, time
from pathlib import Path
from lmforge.outputs import OutputError, atomic_output_dir
out, start, inside, go, name = Path(sys.argv[1]), *map(Path, sys.argv[2:5]), sys.argv[5]

def wait(flag):
    deadline = time.monotonic() + 120
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.01)

wait(start)
try:
    with atomic_output_dir(out) as tmp:
        (tmp / "part-1.txt").write_text(name)
        inside.touch()
        wait(go)
        (tmp / "part-2.txt").write_text(name)
except OutputError as exc:
    print(exc)
    sys.exit(3)
"""


def writer(out: Path, flags: Path, name: str, start: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    start = start or flags / "start"
    args = [str(out), str(start), str(flags / f"inside-{name}"), str(flags / "go"), name]
    return python_child(textwrap.dedent(WRITER), args, env)


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------ JSON


def test_write_json_replaces_whole_or_leaves_the_old_file(tmp_path):
    path = tmp_path / "deep" / "metrics.json"
    write_json(path, {"loss": 1.5, "where": tmp_path})
    assert json.loads(path.read_text()) == {"loss": 1.5, "where": str(tmp_path)}
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match=r"[Cc]ircular"):
        write_json(path, circular)
    assert json.loads(path.read_text())["loss"] == 1.5  # untouched
    assert leftovers(path.parent) == []  # no temporary file left


# ------------------------------------------------------------------------------ folders


def test_an_error_inside_keeps_the_old_output_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("old")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # no owner marker in the output
    with pytest.raises(RuntimeError), atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("step failed")
    assert (out / "a.txt").read_text() == "old"
    assert leftovers(tmp_path) == []


def test_a_second_writer_is_refused_while_the_first_finishes(tmp_path):
    out, flags = tmp_path / "out", tmp_path / "flags"
    flags.mkdir()
    (flags / "start").touch()
    first = writer(out, flags, "first")
    try:
        wait_for(flags / "inside-first", first)
        second = writer(out, flags, "second")
        stdout, stderr = second.communicate(timeout=60)
        assert second.returncode == 3, stderr
        assert str(out) in stdout and f"pid {first.pid}" in stdout and "another run" in stdout
        (flags / "go").touch()
        assert first.wait(timeout=60) == 0, first.stderr.read()
    finally:
        first.kill()
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        "part-1.txt": "first",
        "part-2.txt": "first",
    }
    assert leftovers(tmp_path) == []


def test_writers_racing_each_get_a_whole_output_or_a_clear_error(tmp_path):
    out, flags = tmp_path / "out", tmp_path / "flags"
    flags.mkdir()
    (flags / "go").touch()  # no pause inside: the writers race on entering and on the swap
    procs = [writer(out, flags, f"w{i}") for i in range(4)]
    (flags / "start").touch()
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = [code for code, _, _ in results]
    assert 0 in codes and set(codes) <= {0, 3}, results
    assert not any("Traceback" in err for _, _, err in results), results
    files = {p.name: p.read_text() for p in out.iterdir()}
    assert set(files) == {"part-1.txt", "part-2.txt"} and len(set(files.values())) == 1
    assert leftovers(tmp_path) == []


def test_a_killed_writers_leftovers_are_removed_by_the_next(tmp_path):
    out, flags = tmp_path / "out", tmp_path / "flags"
    flags.mkdir()
    (flags / "start").touch()
    with atomic_output_dir(out) as tmp:
        (tmp / "part-1.txt").write_text("before")
    killed = writer(out, flags, "killed")
    wait_for(flags / "inside-killed", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    left = leftovers(tmp_path)
    assert ".out.lock" in left and any(n.startswith(".out.tmp-") for n in left), left
    assert (out / "part-1.txt").read_text() == "before"  # the old output is untouched
    (tmp_path / ".out.old-0123abcd").mkdir()  # a crash between the two renames
    (tmp_path / ".other.tmp-0123abcd").mkdir()  # another output's: not ours to remove

    with atomic_output_dir(out) as tmp:
        (tmp / "part-1.txt").write_text("after")
    assert (out / "part-1.txt").read_text() == "after"
    assert leftovers(tmp_path) == [".other.tmp-0123abcd"]


def test_a_temporary_folder_of_a_live_writer_is_kept(tmp_path):
    live = tmp_path / ".out.tmp-0000abcd"
    live.mkdir()
    (live / OWNER_FILE).write_text(json.dumps(this_owner()))  # this process: alive
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "x").write_text("x")
    assert live.is_dir()


def test_a_lock_held_on_another_host_is_refused_with_the_fix(tmp_path):
    lock = tmp_path / ".out.lock"
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere-node-7", "token": "t"}))
    with (
        pytest.raises(OutputError, match="elsewhere-node-7") as err,
        atomic_output_dir(tmp_path / "out"),
    ):
        pass
    assert isinstance(err.value, LmforgeError) and f"delete {lock}" in str(err.value)
    lock.unlink()
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "x").write_text("x")
    assert (tmp_path / "out" / "x").exists()


# ------------------------------------------------------------------------------ killed mid-swap

# Publishes version "new" over version "old", killed just before its k-th filesystem step
# after the folder was filled (``kill_points``).
KILLED_AT_STEP = """
import sys
from pathlib import Path
from kill_points import kill_before_step
from lmforge.outputs import atomic_output_dir
out, k = Path(sys.argv[1]), int(sys.argv[2])
arm = kill_before_step(k, ("replace", "rename", "unlink"))
with atomic_output_dir(out) as tmp:
    (tmp / "version.txt").write_text("new")
    (tmp / "weights.bin").write_bytes(b"n" * 1000)
    arm()
"""


def test_a_writer_killed_between_any_two_steps_of_a_publish_loses_nothing(tmp_path):
    """For every k: kill the writer before its k-th filesystem step of the swap; the next
    writer finds the newest complete output in place (the new one once it was complete, i.e.
    once the filled folder was renamed to ``.new-``; the old one before), never none."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(Path(__file__).parent)])}
    seen: list[str] = []
    for k in range(1, 10):
        out = tmp_path / f"k{k}" / "out"
        with atomic_output_dir(out) as tmp:
            (tmp / "version.txt").write_text("old")
        proc = subprocess.run(
            [sys.executable, "-c", KILLED_AT_STEP, str(out), str(k)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode in (0, 9), proc.stderr[-2000:]
        with atomic_output_dir(out) as tmp:  # the next writer
            version = (out / "version.txt").read_text()
            names = sorted(p.name for p in out.iterdir())
            whole = (out / "weights.bin").exists() and (out / "weights.bin").stat().st_size
            (tmp / "version.txt").write_text("next")
        assert version == ("old" if k == 1 else "new"), (k, leftovers(out.parent))
        if version == "new":  # whole, and without the writer's marker
            assert names == ["version.txt", "weights.bin"], (k, names)
            assert whole == 1000, k
        assert leftovers(out.parent) == [], k
        assert (out / "version.txt").read_text() == "next"
        seen.append(version)
        if proc.returncode == 0:
            break
    assert proc.returncode == 0 and len(seen) >= 5  # every step of the swap was cut once
