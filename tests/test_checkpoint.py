"""Checkpoints under damage: corrupted bytes, foreign configs, a second writer, SIGKILL mid-save.

Real torch training (a linear regression through ``fit``), real files, real processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
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

from lmforge.config import TrainConfig
from lmforge.errors import TrainingError
from lmforge.train.checkpoint import LOCK, MANIFEST, Checkpointer, verify, writer_lock
from lmforge.train.distributed import Runtime
from lmforge.train.loop import fit
from lmforge.train.optim import lr_at
from lmforge.train.step import fingerprint

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
    path = [str(task_module), str(SRC), str(Path(__file__).parent)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
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


def test_foreign_and_corrupt_folders_never_get_the_newest_pruned(task_module, tmp_path, capsys):
    ck = tmp_path / "ck"
    train(task_module, ck, fingerprint="other-config", max_steps=40, ckpt_every=10)  # 30, 40
    (ck / "step-00000050").mkdir()  # a folder without a manifest: nobody's, damaged
    (ck / "step-00000050" / "__0_0.distcp").write_bytes(b"junk")

    result, _ = train(task_module, ck, max_steps=20, ckpt_every=5, keep_last=1)
    assert result.resumed_from is None
    names = sorted(p.name for p in ck.iterdir())
    # Ours: only the newest (keep_last=1), in a folder of its own; the other config's and the
    # damaged folder untouched.
    assert names == ["run-ours", "step-00000030", "step-00000040", "step-00000050"]
    assert sorted(p.name for p in (ck / "run-ours").iterdir()) == ["step-00000020"]
    assert verify(ck / "run-ours" / "step-00000020", "ours") is not None
    assert verify(ck / "step-00000040", "other-config") is not None
    assert f"starting fresh in {ck / 'run-ours'}" in capsys.readouterr().err

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


# ------------------------------------------------------------------------------ killed mid-replace

# For k = 1..K, in a forked copy of itself (torch is imported once): saves a new version of
# step 10 over the one in ``base/k<k>``, killed (os._exit) just before its k-th filesystem
# step from the manifest on (a rename; a tree removal is cut after its first file, as a kill
# inside it would be). Prints "k exit-code" per k.
KILLED_IN_REPLACE = """
import os
import torch
import lmforge.train.checkpoint as ckpt
import regression_task as t
from kill_points import kill_before_step
from lmforge.train.distributed import Runtime

base, last = Path(sys.argv[1]), int(sys.argv[2])

def save_killed_at(k):
    arm, write_json = kill_before_step(k), ckpt.write_json

    def arm_then_write(*args, **kwargs):
        arm()
        return write_json(*args, **kwargs)

    ckpt.write_json = arm_then_write
    model = t.model()
    optimizer = torch.optim.AdamW(model.parameters())
    saver = ckpt.Checkpointer(base / f"k{k}", Runtime(), keep_last=2, fingerprint="ours")
    saver.prepare()
    saver.save(10, model, optimizer, {"version": "new"})

for k in range(1, last + 1):
    pid = os.fork()
    if pid == 0:
        save_killed_at(k)
        os._exit(0)
    print(k, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def test_a_save_killed_between_any_two_steps_of_a_replace_loses_nothing(task_module, tmp_path):
    """For every k: kill the writer of a new step-10 before its k-th filesystem step; the next
    writer resumes from a complete step 10, the new one once its manifest was written, and
    every older checkpoint is still there."""
    last = 6
    for k in range(1, last + 1):
        train(task_module, tmp_path / f"k{k}", max_steps=10)  # step-5, step-10 ("old")
    proc = child(task_module, KILLED_IN_REPLACE, str(tmp_path), str(last))
    stdout, stderr = proc.communicate(timeout=300)
    codes = [int(line.split()[1]) for line in stdout.splitlines()]
    assert proc.returncode == 0 and len(codes) == last, stderr[-2000:]
    assert 0 in codes, codes
    finished = codes.index(0)  # the first k past the last step: the save ran through
    assert finished >= 4 and set(codes[:finished]) == {9}, codes  # every step was cut once

    for k in range(1, finished + 2):
        ck = tmp_path / f"k{k}"
        saver = Checkpointer(ck, Runtime(), keep_last=2, fingerprint="ours")
        saver.prepare()
        folder, manifest = saver.latest()
        version = manifest["state"].get("version", "old")
        assert folder == ck / "step-00000010"
        assert version == ("old" if k == 1 else "new"), (k, sorted(os.listdir(ck)))
        assert sorted(p.name for p in ck.iterdir() if p.name != LOCK) == [
            "step-00000005",
            "step-00000010",
        ], k
        assert verify(ck / "step-00000005", "ours") is not None


# ------------------------------------------------------------------------------ other runs


def test_another_config_gets_its_own_folder_and_both_runs_resume(task_module, tmp_path, capsys):
    """A run of another fingerprint never deletes or replaces the first run's checkpoints,
    even at the same steps; each run later resumes from its own."""
    ck = tmp_path / "ck"
    train(task_module, ck, fingerprint="a", max_steps=10)
    first = {p.name: (p / MANIFEST).read_text() for p in ck.glob("step-*")}
    b, _ = train(task_module, ck, fingerprint="b", max_steps=10)
    assert b.resumed_from is None
    assert {p.name: (p / MANIFEST).read_text() for p in ck.glob("step-*")} == first
    assert sorted(p.name for p in (ck / "run-b").iterdir()) == ["step-00000005", "step-00000010"]

    a, _ = train(task_module, ck, fingerprint="a", max_steps=15)
    b, _ = train(task_module, ck, fingerprint="b", max_steps=15)
    assert (a.resumed_from, b.resumed_from) == (10, 10)
    assert verify(ck / "step-00000015", "a") and verify(ck / "run-b" / "step-00000015", "b")
    assert "resuming from" in capsys.readouterr().err


def test_a_foreign_checkpoint_at_the_same_step_is_moved_to_its_run_not_replaced(
    task_module, tmp_path
):
    """A folder mixing two runs (as lmforge before per-run folders wrote them): saving a step
    that the other run holds moves the other's to ``run-<its fingerprint>/``."""
    ck, other = tmp_path / "ck", tmp_path / "other"
    train(task_module, ck, fingerprint="a", max_steps=10)  # a: 5, 10
    train(task_module, other, fingerprint="b", max_steps=15)  # b: 10, 15
    (other / "step-00000015").rename(ck / "step-00000015")
    theirs = (ck / "step-00000015" / MANIFEST).read_text()

    a, _ = train(task_module, ck, fingerprint="a", max_steps=20)
    assert a.resumed_from == 10 and verify(ck / "step-00000015", "a")
    assert (ck / "run-b" / "step-00000015" / MANIFEST).read_text() == theirs
    b, _ = train(task_module, ck, fingerprint="b", max_steps=20)
    assert b.resumed_from == 15


# ------------------------------------------------------------------------------ what may change


def test_a_longer_run_resumes_and_recomputes_the_schedule(task_module, tmp_path, capsys):
    import regression_task as rt_

    ck = tmp_path / "ck"
    schedule = dict(warmup_steps=2, min_lr_ratio=0.1)
    train(task_module, ck, max_steps=10, **schedule)
    capsys.readouterr()
    longer, _ = train(task_module, ck, max_steps=20, **schedule)
    assert longer.resumed_from == 10 and longer.step == 20
    err = capsys.readouterr().err
    line = "(max_steps 10 -> 20: schedule recomputed for 20 steps)"
    assert f"resuming from {ck / 'step-00000010'} {line}" in err
    rows = {int(r["step"]): r["lr"] for r in longer.history if "lr" in r}
    for done in (15, 20):  # the lr of the step that ended at `done`, by the 20-step schedule
        assert rows[done] == pytest.approx(lr_at(done - 1, rt_.cfg(max_steps=20, **schedule)))
    assert rows[15] > 0.05 * 0.1 * 1.5  # the 10-step schedule had reached its floor by then

    shorter, _ = train(task_module, ck, max_steps=15, **schedule)
    assert shorter.resumed_from == 15 and shorter.step == 15  # the kept step-15: nothing to do


def test_another_global_batch_resumes_and_says_what_it_does_to_the_data_order(
    task_module, tmp_path, capsys
):
    ck = tmp_path / "ck"
    train(task_module, ck, max_steps=10, micro_batch_size=8)
    capsys.readouterr()
    again, _ = train(task_module, ck, max_steps=15, micro_batch_size=4)
    assert again.resumed_from == 10
    err = capsys.readouterr().err
    assert "micro batch x accumulation 8x1 -> 4x1; global batch 8 -> 4: the data order" in err


def test_the_fingerprint_leaves_out_what_a_run_may_change():
    model, data = {"n_layers": 2}, {"digest": "abc"}
    base = fingerprint(TrainConfig(), model, data)
    for change in (
        {"max_steps": 5000},
        {"micro_batch_size": 2, "grad_accum_steps": 4},
        {"parallel": "fsdp", "activation_checkpointing": True},
        {"eval_every": 7, "ckpt_every": 3, "keep_last": 9},
    ):
        assert fingerprint(TrainConfig(**change), model, data) == base, change
    for change in ({"lr": 0.002}, {"seed": 1}, {"warmup_steps": 3}, {"weight_decay": 0.0}):
        assert fingerprint(TrainConfig(**change), model, data) != base, change
    assert fingerprint(TrainConfig(), {"n_layers": 3}, data) != base
    assert fingerprint(TrainConfig(), model, {"digest": "abd"}) != base
    # What lmforge computed before, for the same config: its checkpoints still resume.
    old = json.dumps(
        {"model": model, "train": _cadence_free(TrainConfig()), "data": data},
        sort_keys=True,
        default=str,
    )
    assert base.legacy == hashlib.sha256(old.encode()).hexdigest()[:16]


def test_the_fine_tuning_budget_and_stopping_rule_may_change_on_resume():
    """``max_epochs``, ``early_stopping_patience`` and ``monitor`` (fine-tuning only) set how
    long the same run goes on and which evaluation is kept, not the weights' trajectory."""
    from lmforge.config import FinetuneConfig

    model, data = {"n_layers": 2}, {"digest": "abc"}
    base = fingerprint(FinetuneConfig(), model, data)
    for change in (
        {"max_epochs": 10.0},
        {"max_steps": 500},
        {"early_stopping_patience": 0},
        {"monitor": "val_loss"},
    ):
        assert fingerprint(FinetuneConfig(**change), model, data) == base, change
    assert fingerprint(FinetuneConfig(lr=0.01), model, data) != base


def _cadence_free(cfg: TrainConfig) -> dict:
    cadence = {"eval_every", "eval_batches", "log_every", "ckpt_every", "keep_last"}
    cadence |= {"num_threads", "compile", "device", "baseline"}
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in cadence}
