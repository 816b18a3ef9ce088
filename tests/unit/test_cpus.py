"""CPU count for the hash pool: the affinity mask, capped by a cgroup CPU quota.

Each test builds a cgroup file system as the kernel lays it out, in a
temporary directory, with the process's membership file beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.core.cpus import available_cpus, cgroup_cpu_limit

AFFINITY = len(os.sched_getaffinity(0))


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "sys-fs-cgroup"


@pytest.fixture
def membership(tmp_path: Path) -> Path:
    return tmp_path / "proc-self-cgroup"


def unified(root: Path, membership: Path, own_path: str) -> None:
    write(root / "cgroup.controllers", "cpuset cpu io memory pids")
    write(membership, f"0::{own_path}")


def test_v2_the_tightest_level_of_the_own_cgroup_and_its_parents_counts(
    root: Path, membership: Path
) -> None:
    unified(root, membership, "/kubepods/pod1/ctr")
    write(root / "kubepods/pod1/ctr/cpu.max", "max 100000")
    write(root / "kubepods/pod1/cpu.max", "150000 100000")
    write(root / "kubepods/cpu.max", "400000 100000")

    assert cgroup_cpu_limit(root, membership) == 1.5
    assert available_cpus(root, membership) == min(AFFINITY, 2)


def test_v2_without_a_quota_is_the_affinity_mask(root: Path, membership: Path) -> None:
    unified(root, membership, "/")
    write(root / "cpu.max", "max 100000")

    assert cgroup_cpu_limit(root, membership) is None
    assert available_cpus(root, membership) == AFFINITY


def test_a_fraction_of_a_cpu_still_gets_one_thread(
    root: Path, membership: Path
) -> None:
    unified(root, membership, "/")  # a container's own namespace: it is the root
    write(root / "cpu.max", "20000 100000")

    assert cgroup_cpu_limit(root, membership) == 0.2
    assert available_cpus(root, membership) == 1


def test_v1_container_view_reads_the_mount_when_the_host_path_is_absent(
    root: Path, membership: Path
) -> None:
    # Docker on cgroup v1: the file names the host's path, the mount is its own.
    write(membership, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/")
    write(root / "cpu,cpuacct/cpu.cfs_quota_us", "50000")
    write(root / "cpu,cpuacct/cpu.cfs_period_us", "100000")

    assert cgroup_cpu_limit(root, membership) == 0.5
    assert available_cpus(root, membership) == 1


def test_v1_unlimited_and_hybrid_hosts(root: Path, membership: Path) -> None:
    # This machine's layout: v1 cpu controller, an empty unified tree beside it.
    write(membership, "1:cpu:/\n0::/")
    write(root / "unified/cgroup.controllers", "")
    write(root / "cpu/cpu.cfs_quota_us", "-1")
    write(root / "cpu/cpu.cfs_period_us", "100000")

    assert cgroup_cpu_limit(root, membership) is None
    write(root / "cpu/cpu.cfs_quota_us", "300000")
    assert cgroup_cpu_limit(root, membership) == 3.0
    assert available_cpus(root, membership) == min(AFFINITY, 3)


@pytest.mark.parametrize(
    "content", ["max", "abc 100000", "100000 0", "-5 100000", "1 2 3", ""]
)
def test_unreadable_quotas_are_ignored(
    root: Path, membership: Path, content: str
) -> None:
    unified(root, membership, "/app")
    write(root / "app/cpu.max", content)
    write(root / "cpu.max", "200000 100000")

    assert cgroup_cpu_limit(root, membership) == 2.0


def test_no_cgroup_file_system_at_all(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    assert cgroup_cpu_limit(missing, missing) is None
    assert available_cpus(missing, missing) == AFFINITY
