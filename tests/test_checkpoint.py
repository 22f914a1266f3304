"""Checkpoints under damage: corrupted bytes, foreign configs, a second writer, SIGKILL mid-save.

Real torch training (a linear regression through ``fit``), real files, real processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from process_fixtures import python_child, wait_for

from lmforge.errors import TrainingError
from lmforge.train.checkpoint import LOCK, Checkpointer, verify, writer_lock
from lmforge.train.distributed import Runtime
from lmforge.train.loop import fit

SRC = Path(__file__).resolve().parents[1] / "src"

# The task and config every process here trains: importable by the child scripts below.
TASK = """
import torch
from lmforge.config import TrainConfig


class Regression:
    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 4, generator=gen)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])

    def batch(self, step, micro):
        i = (step * 8) % 64
        return self.x[i : i + 8], self.y[i : i + 8]

    def loss(self, model, batch):
        return torch.nn.functional.mse_loss(model(batch[0]), batch[1])

    def tokens(self, batch):
        return batch[0].shape[0]

    def evaluate(self, model):
        return {}


def model():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 1)


def cfg(**kw):
    # A constant lr: a run stopped early is the same trajectory as a longer one.
    base = dict(max_steps=20, warmup_steps=0, lr=0.05, min_lr_ratio=1.0, ckpt_every=5, keep_last=2,
                eval_every=0,
                log_every=5, precision="fp32", parallel="single", num_threads=1)
    return TrainConfig(**{**base, **kw})
"""


@pytest.fixture(scope="module")
def task_module(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("task")
    (folder / "regression_task.py").write_text(TASK)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


def train(task_module, ck: Path, fingerprint: str = "ours", **kw):
    import regression_task as rt_

    model = rt_.model()
    result = fit(
        model,
        rt_.Regression(),
        rt_.cfg(**kw),
        Runtime(),
        checkpoint_dir=ck,
        fingerprint=fingerprint,
        progress=False,
    )
    return result, model


def child(task_module: Path, body: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(task_module), str(SRC)])}
    code = "import sys, time\nfrom pathlib import Path\n" + textwrap.dedent(body)
    return python_child(code, list(args), env)


def flip_bytes(path: Path, offset: int | None = None, n: int = 16) -> None:
    """Overwrite n bytes in place (the file keeps its size)."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at : at + n] = bytes(b ^ 0xFF for b in data[at : at + n])
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------ verification


def test_same_size_corruption_is_skipped_for_the_previous_good_one(task_module, tmp_path, caplog):
    _, reference = train(task_module, tmp_path / "whole")
    ck = tmp_path / "ck"
    train(task_module, ck, max_steps=15)  # step-10 and step-15 remain
    shard = ck / "step-00000015" / "__0_0.distcp"
    size = shard.stat().st_size
    flip_bytes(shard, offset=size - 40)  # inside the tensor bytes, at the end of the file
    assert shard.stat().st_size == size
    assert verify(ck / "step-00000015", "ours") is None
    assert "step-00000015" in caplog.text and "sha256" in caplog.text

    caplog.clear()
    resumed, model = train(task_module, ck)
    assert resumed.resumed_from == 10
    assert "skipping checkpoint" in caplog.text and "step-00000015" in caplog.text
    # Resumed from the good step 10, the run ends exactly where the uninterrupted one did.
    assert torch.allclose(model.weight, reference.weight, atol=1e-6)
    assert verify(ck / "step-00000020", "ours") is not None  # the damaged name was rewritten


def test_a_manifest_without_checksums_is_not_trusted(task_module, tmp_path, caplog):
    ck = tmp_path / "ck"
    train(task_module, ck, max_steps=10)
    manifest = ck / "step-00000010" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["files"] = {rel: e["size"] for rel, e in data["files"].items()}  # the old format
    manifest.write_text(json.dumps(data))
    assert verify(ck / "step-00000010", "ours") is None
    assert "without checksums" in caplog.text


# ------------------------------------------------------------------------------ pruning


def test_foreign_and_corrupt_folders_never_get_the_newest_pruned(task_module, tmp_path, caplog):
    ck = tmp_path / "ck"
    train(task_module, ck, fingerprint="other-config", max_steps=40, ckpt_every=10)  # 30, 40
    (ck / "step-00000050").mkdir()  # a folder without a manifest: nobody's, damaged
    (ck / "step-00000050" / "__0_0.distcp").write_bytes(b"junk")

    result, _ = train(task_module, ck, max_steps=20, ckpt_every=5, keep_last=1)
    assert result.resumed_from is None
    names = sorted(p.name for p in ck.iterdir())
    # Ours: only the newest (keep_last=1); the other config's and the damaged folder untouched.
    assert names == ["step-00000020", "step-00000030", "step-00000040", "step-00000050"]
    assert verify(ck / "step-00000020", "ours") is not None
    assert verify(ck / "step-00000040", "other-config") is not None
    assert "leaving" in caplog.text and "different config" in caplog.text

    # keep_last=2 counts only our verified checkpoints: a corrupted one of ours is not one.
    ck2 = tmp_path / "ck2"
    train(task_module, ck2, max_steps=10, keep_last=2)  # 5, 10
    flip_bytes(ck2 / "step-00000010" / "__0_0.distcp")
    again, _ = train(task_module, ck2, max_steps=15, keep_last=2)
    assert again.resumed_from == 5
    assert sorted(p.name for p in ck2.iterdir()) == ["step-00000010", "step-00000015"]
    assert verify(ck2 / "step-00000010", "ours") is not None  # rewritten by the resumed run


def test_keep_last_below_one_is_refused(tmp_path):
    with pytest.raises(TrainingError, match="keep_last=0"):
        Checkpointer(tmp_path, Runtime(), keep_last=0)


# ------------------------------------------------------------------------------ one writer


HOLD_LOCK = """
from lmforge.train.checkpoint import writer_lock
from lmforge.train.distributed import Runtime
root, ready, done = map(Path, sys.argv[1:4])
with writer_lock(root, Runtime()):
    ready.touch()
    deadline = time.monotonic() + 120
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
"""


def test_a_second_writer_of_a_checkpoint_folder_is_refused(task_module, tmp_path):
    ck, ready, done = tmp_path / "ck", tmp_path / "ready", tmp_path / "done"
    holder = child(task_module, HOLD_LOCK, str(ck), str(ready), str(done))
    try:
        wait_for(ready, holder)
        with pytest.raises(TrainingError) as err:
            train(task_module, ck, max_steps=5)
        message = str(err.value)
        assert str(ck) in message and f"pid {holder.pid}" in message
        assert not any(p.name.startswith("step-") for p in ck.iterdir())  # nothing written
        done.touch()
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
    assert not (ck / LOCK).exists()  # released
    result, _ = train(task_module, ck, max_steps=5)
    assert result.step == 5 and (ck / "step-00000005").is_dir()


def test_a_lock_left_by_a_killed_writer_is_taken_over(task_module, tmp_path):
    ck, ready = tmp_path / "ck", tmp_path / "ready"
    holder = child(task_module, HOLD_LOCK, str(ck), str(ready), str(tmp_path / "never"))
    wait_for(ready, holder)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    assert json.loads((ck / LOCK).read_text())["pid"] == holder.pid  # left behind
    result, _ = train(task_module, ck, max_steps=5)
    assert result.step == 5 and not (ck / LOCK).exists()
    with writer_lock(ck, Runtime()), pytest.raises(TrainingError, match="another run"):
        train(task_module, ck, max_steps=5)  # this process holds it: a second fit is refused


# ------------------------------------------------------------------------------ SIGKILL mid-save


KILLED_IN_SAVE = """
import lmforge.train.checkpoint as ckpt
import regression_task as t
from lmforge.train.distributed import Runtime
from lmforge.train.loop import fit

root, inside, where = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
original = getattr(ckpt, where)

def stall_in_step_15(*args, **kwargs):
    # write_json(path, obj), save_file(d, path)
    path = args[0] if where == "write_json" else args[1]
    if ".tmp-step-00000015" in str(path):
        if where == "write_json":
            Path(path).write_text('{"step": 15, "files"')  # a manifest cut short
        inside.touch()
        time.sleep(120)  # killed here
    return original(*args, **kwargs)

setattr(ckpt, where, stall_in_step_15)
fit(t.model(), t.Regression(), t.cfg(), Runtime(), checkpoint_dir=root, fingerprint="ours",
    progress=False)
"""


@pytest.mark.parametrize("where", ["save_file", "write_json"])  # RNG state, manifest
def test_sigkill_during_a_save_resumes_from_the_last_good_one(task_module, tmp_path, where):
    _, reference = train(task_module, tmp_path / "whole")
    ck, inside = tmp_path / "ck", tmp_path / "inside"
    proc = child(task_module, KILLED_IN_SAVE, str(ck), str(inside), where)
    try:
        wait_for(inside, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert (ck / ".tmp-step-00000015").is_dir() and (ck / LOCK).exists()  # killed mid-save

    resumed, model = train(task_module, ck)
    assert resumed.resumed_from == 10
    assert torch.allclose(model.weight, reference.weight, atol=1e-6)
    assert sorted(p.name for p in ck.iterdir()) == ["step-00000015", "step-00000020"]
