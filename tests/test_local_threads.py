"""The local runner splits the cores the process really has (affinity, cgroup quota)."""

from __future__ import annotations

import pytest

from lmforge.cores import cgroup_cpu_limit, threads_per_process, usable_cores


@pytest.mark.parametrize(
    ("cores", "procs", "threads"),
    [(2, 1, 2), (2, 2, 1), (16, 2, 8), (16, 3, 5), (2, 4, 1), (1, 1, 1)],
)
def test_threads_never_oversubscribe(cores, procs, threads):
    assert threads_per_process(cores, procs) == threads
    assert threads * procs <= max(cores, procs)  # more procs than cores: one thread each


def test_quota_caps_the_affinity_mask():
    assert usable_cores(affinity=64, quota=2.0) == 2  # a 2-CPU pod on a 64-core node
    assert usable_cores(affinity=4, quota=None) == 4
    assert usable_cores(affinity=4, quota=8.0) == 4
    assert usable_cores(affinity=4, quota=0.5) == 1  # half a core still runs one thread


def test_cgroup_v2_and_v1_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(v1) is None


def test_a_replica_sizes_its_threads_from_the_quota(monkeypatch):
    """`init_distributed` without OMP_NUM_THREADS: a 1-CPU quota means one thread, whatever
    the affinity mask says (before, a pod on a big node ran one thread per node core)."""
    import torch

    import lmforge.cores
    from lmforge.train.distributed import init_distributed

    for var in ("OMP_NUM_THREADS", "WORLD_SIZE", "RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(lmforge.cores, "cgroup_cpu_limit", lambda *a: 1.0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        init_distributed("cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
