"""How many CPUs this process can use: its affinity mask, capped by a CPU quota.

A container limited to two CPUs on a 64-core host still sees 64 CPUs in its
affinity mask (and in `os.cpu_count()`). Work sized by that count (the password
hash threads) would let a burst of logins spend the whole quota at once, and the
kernel would then throttle the event loop along with them, the opposite of
what a bounded pool is for. The quota lives in the process's cgroup: `cpu.max`
on cgroup v2, `cpu.cfs_quota_us` / `cpu.cfs_period_us` on v1; a parent's
limit applies to its children, so every level up to the mount counts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
_V1_CPU_DIRECTORIES = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ratio(quota: str, period: str) -> float | None:
    """`quota / period` in CPUs; None for "no limit" (`max`, `-1`) or nonsense."""
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us


def _v2_limit(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")
    if text is None or len(text.split()) != 2:
        return None
    quota, period = text.split()
    return _ratio(quota, period)


def _v1_limit(directory: Path) -> float | None:
    quota = _read(directory / "cpu.cfs_quota_us")
    period = _read(directory / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    return _ratio(quota, period)


def _own_paths(proc_cgroup: Path) -> dict[str, str]:
    """This process's cgroup path per hierarchy: "" for v2, controller names for v1."""
    paths: dict[str, str] = {}
    for line in (_read(proc_cgroup) or "").splitlines():
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _levels(mount: Path, own_path: str) -> Iterator[Path]:
    """The process's cgroup directory under `mount`, then each parent up to it.

    Inside a container the mount usually is the container's own cgroup while
    the path names it from the host's root: levels that do not exist are
    skipped, and the mount itself is always looked at.
    """
    relative = own_path.strip("/")
    directory = mount / relative if relative else mount
    while directory != mount and mount in directory.parents:
        yield directory
        directory = directory.parent
    yield mount


def cgroup_cpu_limit(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP
) -> float | None:
    """The tightest CPU quota over this process's cgroups, in CPUs; None if none.

    Args:
        root: Where the cgroup file systems are mounted.
        proc_cgroup: The process's cgroup membership file.
    """
    paths = _own_paths(proc_cgroup)
    found: list[float | None] = []
    if (root / "cgroup.controllers").exists():  # the unified (v2) hierarchy
        found += [_v2_limit(level) for level in _levels(root, paths.get("", "/"))]
    for name in _V1_CPU_DIRECTORIES:
        if (root / name).is_dir():
            levels = _levels(root / name, paths.get("cpu", "/"))
            found += [_v1_limit(level) for level in levels]
    return min((limit for limit in found if limit is not None), default=None)


def available_cpus(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP
) -> int:
    """CPUs this process may use: its affinity mask, capped by its CPU quota.

    A quota of 1.5 CPUs counts as 2 (the pool keeps the half CPU busy too),
    never less than 1.

    Args:
        root: Where the cgroup file systems are mounted.
        proc_cgroup: The process's cgroup membership file.
    """
    if hasattr(os, "sched_getaffinity"):
        cpus = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - macOS, Windows
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is None:
        return cpus
    return max(1, min(cpus, math.ceil(limit)))
