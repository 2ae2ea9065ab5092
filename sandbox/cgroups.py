"""Memory (without swap), pids and CPU limits for sandboxes that Docker does not start (bubblewrap).

Works with cgroup v2 (one unified hierarchy) and v1 (a folder per controller), as root. A sandbox's
processes join its group before they exec, so nothing it forks escapes the limits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from sandbox.base import SandboxUnavailableError

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "overnight"


def _bytes(size: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    text = size.strip().lower().rstrip("b")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


class CGroup:
    def __init__(self, name: str, *, memory: str, pids: int, cpus: float) -> None:
        self.unified = (CGROUP_ROOT / "cgroup.controllers").exists()
        if self.unified:
            self.dirs = [CGROUP_ROOT / PARENT / name]
        else:
            self.dirs = [CGROUP_ROOT / controller / PARENT / name for controller in ("memory", "pids", "cpu")]
        try:
            for directory in self.dirs:
                directory.mkdir(parents=True, exist_ok=True)
            self._limit(_bytes(memory), pids, cpus)
        except OSError as exc:
            self.remove()
            raise SandboxUnavailableError(
                f"cannot create the sandbox's cgroup ({exc}); the bubblewrap backend needs root and writable cgroups"
            ) from exc

    def _limit(self, memory: int, pids: int, cpus: float) -> None:
        period = 100_000
        quota = int(cpus * period)
        if self.unified:
            parent = CGROUP_ROOT / PARENT
            with contextlib.suppress(OSError):
                (parent / "cgroup.subtree_control").write_text("+memory +pids +cpu")
            group = self.dirs[0]
            (group / "memory.max").write_text(str(memory))
            with contextlib.suppress(OSError):
                (group / "memory.swap.max").write_text("0")
            (group / "pids.max").write_text(str(pids))
            (group / "cpu.max").write_text(f"{quota} {period}")
            return
        memory_dir, pids_dir, cpu_dir = self.dirs
        (memory_dir / "memory.limit_in_bytes").write_text(str(memory))
        with contextlib.suppress(OSError):  # only with swap accounting on
            (memory_dir / "memory.memsw.limit_in_bytes").write_text(str(memory))
        with contextlib.suppress(OSError):
            (memory_dir / "memory.swappiness").write_text("0")
        (pids_dir / "pids.max").write_text(str(pids))
        (cpu_dir / "cpu.cfs_period_us").write_text(str(period))
        (cpu_dir / "cpu.cfs_quota_us").write_text(str(quota))

    def join(self) -> None:
        """Move the calling process into the group (call in the child, before exec)."""
        for directory in self.dirs:
            (directory / "cgroup.procs").write_text("0")

    def pids(self) -> list[int]:
        found: set[int] = set()
        for directory in self.dirs:
            with contextlib.suppress(OSError):
                found.update(int(line) for line in (directory / "cgroup.procs").read_text().split())
        return sorted(found)

    def remove(self) -> None:
        """Kill whatever is left in the group, then remove it."""
        for _ in range(50):
            remaining = self.pids()
            if not remaining:
                break
            for pid in remaining:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        for directory in self.dirs:
            with contextlib.suppress(OSError):
                directory.rmdir()


OWNER_MARK = "@"
"""A group's name ends with ``@`` and the identity of the worker process that made it (``pid.start``)."""


def owned_name(name: str, owner: str) -> str:
    return f"{name}{OWNER_MARK}{owner.replace(':', '.')}"


def reap_empty_groups(alive: Callable[[str], bool]) -> int:
    """Remove the empty groups of workers that died (their processes died with them). A living worker's group
    stays even while it is empty: it is made before the sandbox's first process joins it."""
    removed = 0
    parents = (
        [CGROUP_ROOT / PARENT]
        if (CGROUP_ROOT / "cgroup.controllers").exists()
        else [CGROUP_ROOT / controller / PARENT for controller in ("memory", "pids", "cpu")]
    )
    for parent in parents:
        if not parent.is_dir():
            continue
        for group in parent.iterdir():
            _, mark, owner = group.name.rpartition(OWNER_MARK)
            if mark and alive(owner.replace(".", ":")):
                continue
            if group.is_dir() and not (group / "cgroup.procs").read_text().strip():
                with contextlib.suppress(OSError):
                    group.rmdir()
                    removed += 1
    return removed
