"""The CPUs a run may use: the cgroup CPU quota of a container counts, not only the host's cores."""

import pytest
import torch

from fmnist_seq import distributed, machine
from fmnist_seq.distributed import resolve_workers
from fmnist_seq.errors import ParamsError
from fmnist_seq.machine import cpu_quota

CPU = torch.device("cpu")


def _cgroup(tmp_path, proc_lines: str, files: dict[str, str]):
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(proc_lines)
    return root, proc


def test_cgroup_v2_quota_is_the_tightest_on_the_path(tmp_path):
    root, proc = _cgroup(tmp_path, "0::/system.slice/job.scope\n", {
        "system.slice/cpu.max": "300000 100000\n", "system.slice/job.scope/cpu.max": "150000 100000\n"})
    assert cpu_quota(root, proc) == 1.5
    root, proc = _cgroup(tmp_path / "unlimited", "0::/\n", {"cpu.max": "max 100000\n"})
    assert cpu_quota(root, proc) is None


def test_cgroup_v1_quota_and_a_container_that_sees_its_own_cgroup_as_root(tmp_path):
    # inside a container the path in /proc/self/cgroup names a folder that is not mounted: the mount is it
    root, proc = _cgroup(tmp_path, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n", {
        "cpu,cpuacct/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cpu_quota(root, proc) == 2.0
    root, proc = _cgroup(tmp_path / "none", "3:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n",
                                                         "cpu/cpu.cfs_period_us": "100000\n"})
    assert cpu_quota(root, proc) is None
    assert cpu_quota(tmp_path / "missing", tmp_path / "missing_proc") is None


def test_usable_cpus_stay_within_the_quota(monkeypatch):
    monkeypatch.setattr(machine, "cpu_quota", lambda: 1.5)
    assert machine.usable_cpus() == 1
    monkeypatch.setattr(machine, "cpu_quota", lambda: 0.2)  # less than one CPU still runs one process
    assert machine.usable_cpus() == 1


def test_auto_workers_resolve_within_the_quota_and_the_batch(monkeypatch):
    monkeypatch.setattr(machine.psutil, "cpu_count", lambda logical=True: 64)  # a many-core host
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: set(range(128)), raising=False)
    monkeypatch.setattr(machine, "cpu_quota", lambda: None)
    assert resolve_workers("auto", CPU, batch_size=256) == 64
    assert resolve_workers("auto", CPU, batch_size=8) == 8  # a small-batch sweep: no empty shards
    monkeypatch.setattr(machine, "cpu_quota", lambda: 4.0)  # a container granted 4 CPUs of the 128
    assert resolve_workers("auto", CPU, batch_size=256) == 4
    assert resolve_workers(3, CPU, batch_size=256) == 3


def test_resolved_workers_are_checked_like_explicit_ones(monkeypatch):
    with pytest.raises(ParamsError, match=r"train_gru.workers = 4 is out of range: must be <= train_gru.batch_size \(2\)"):
        resolve_workers(4, CPU, batch_size=2, where="train_gru")
    monkeypatch.setattr(distributed, "physical_cores", lambda: 0)  # a broken count never launches zero workers
    with pytest.raises(ParamsError, match=r"workers = 0 \(resolved from auto\) is out of range: must be >= 1"):
        resolve_workers("auto", CPU, batch_size=2, where="train_gru")


def test_explicit_cuda_workers_cannot_outnumber_the_gpus(monkeypatch):
    """Rank N trains on cuda:N of this machine: a third worker with two GPUs would fail in set_device, after the
    launch and once per restart. A params error names the key, the count and the GPUs instead."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cuda = torch.device("cuda")
    assert resolve_workers(2, cuda, batch_size=256) == 2 and resolve_workers("auto", cuda, batch_size=256) == 2
    with pytest.raises(ParamsError, match=r"^params.yaml: train_gru.workers = 3 is more than the 2 CUDA GPU\(s\) "
                                          r"visible on this machine: .*set train_gru.workers to at most 2, or to auto"):
        resolve_workers(3, cuda, batch_size=256, where="train_gru")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(ParamsError, match=r"2 CUDA GPU\(s\) visible on this machine \(CUDA_VISIBLE_DEVICES=0,1\)"):
        resolve_workers(3, cuda, batch_size=256, where="train_gru")
    assert resolve_workers(3, CPU, batch_size=256) == 3  # CPU workers take no GPU
