"""Kernel-enforced disk limits: each host folder a sandbox can fill is a filesystem of its own, as large as the
limit.

A task's workspace and a set-up's environment folder (its ``/opt/overnight``) are each the root of an ext4
filesystem kept in a sparse file beside the folder (``FOLDER.disk``), mounted ``nosuid,nodev``. A write past
the size fails at once with ENOSPC, however fast and by whatever means (``fallocate``, ``dd``, a million
small files: the inodes are in it too); the host gains at most the file's size. The other places a sandbox
can write are size-limited tmpfs (``/tmp``, the home, Docker's ``/dev/shm``) or nothing (a read-only root,
and a control folder only the exec server's uid may write).

Why not project quotas on one shared filesystem (XFS ``prjquota``, ext4 ``project``): the kernels this runs
on are built without XFS quota and without the ext4 quota format (``CONFIG_XFS_QUOTA``, ``CONFIG_QFMT_V2``
unset), and a loop filesystem needs neither (only loop devices and e2fsprogs, in every Debian). Making one
costs about 25 ms (mkfs + mount), once per task and once per set-up, never per command or per agent start;
an empty 10 GiB disk takes 228 KiB of the host's.

This needs a root worker (``mount``) with loop devices. Without them, ``disk_enforcement="poll"`` keeps the
exec server's once-a-second measurement, which a fast writer passes by gigabytes (docs/sandbox.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import stat
import subprocess
from pathlib import Path

from sandbox.base import SandboxError, SandboxLimits, SandboxUnavailableError

DISK_SUFFIX = ".disk"
MKFS = ("mkfs.ext4", "-q", "-F", "-b", "4096", "-i", "8192", "-m", "0", "-O", "^has_journal,^resize_inode")
"""No journal (a crashed task's disk is thrown away), no blocks reserved for root, one inode per 8 KiB."""
MOUNT_OPTIONS = "loop,nosuid,nodev,noatime,noinit_itable"
"""``noinit_itable``: the kernel never zeroes unused inode tables, so they never take the host's blocks."""
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def kernel_disks_unavailable() -> str | None:
    """Why this process cannot give sandboxes disks of their own, or None when it can."""
    if os.geteuid() != 0:
        return "the worker does not run as root (a disk per workspace is a loop filesystem it mounts)"
    if not Path("/dev/loop-control").exists():
        return "there are no loop devices (/dev/loop-control is missing: a container without them?)"
    for tool, package in (("mkfs.ext4", "e2fsprogs"), ("mount", "mount")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    return None


def disk_image(folder: Path) -> Path:
    return folder.with_name(folder.name + DISK_SUFFIX)


def make_disk(folder: Path, size: int, *, owner: tuple[int, int] = (0, 0)) -> None:
    """Make ``folder`` (absent or empty) the root of a new ext4 filesystem of ``size`` bytes, owned by
    ``owner``; ``remove_folder`` undoes it."""
    reason = kernel_disks_unavailable()
    if reason is not None:
        raise SandboxUnavailableError(f"cannot give {folder} a disk of its own: {reason}")
    folder.mkdir(parents=True, exist_ok=True)
    if os.path.ismount(folder) or any(folder.iterdir()):
        raise SandboxError(f"cannot give {folder} a disk of its own: it is not an empty folder")
    image = disk_image(folder)
    try:
        with open(image, "wb") as handle:  # sparse: the host's blocks are taken only as the sandbox writes
            handle.truncate(size)
        _run([*MKFS, "-E", f"lazy_itable_init=1,nodiscard,root_owner={owner[0]}:{owner[1]}", str(image)])
        _run(["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(image), str(folder)])
        (folder / "lost+found").rmdir()
    except BaseException:
        remove_disk(folder)
        raise


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[:1] or [f"exit {result.returncode}"]
        raise SandboxUnavailableError(f"{argv[0]} failed: {detail[0].strip()}")


def remove_disk(folder: Path) -> None:
    """Unmount the disk at ``folder`` (lazily: a process may still hold a file on it) and delete its file.
    The folder stays, empty."""
    if os.path.ismount(folder) and _libc.umount2(os.fsencode(folder), MNT_DETACH) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"umount {folder}: {os.strerror(error)}")
    disk_image(folder).unlink(missing_ok=True)


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest first."""
    root = os.path.abspath(path)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
        for line in mountinfo:
            point = _unescape(line.split()[4])
            if point == root or point.startswith(root.rstrip("/") + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for escaped, raw in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, raw)
    return field


def remove_folder(path: Path) -> None:
    """Remove ``path`` and everything in it, disks included (unmounted and deleted first)."""
    for point in mounts_under(path):
        with contextlib.suppress(OSError):
            remove_disk(point)
    disk_image(path).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def is_disk(folder: Path, limit: int) -> bool:
    """``folder`` is the root of a filesystem of its own no larger than ``limit``."""
    if not os.path.ismount(folder):
        return False
    info = os.statvfs(folder)
    return info.f_blocks * info.f_frsize <= limit


def kernel_limited(limits: SandboxLimits) -> bool:
    return limits.disk_enforcement == "kernel" and limits.disk_limit > 0


def make_limited_folder(path: Path, limits: SandboxLimits, *, owner: tuple[int, int] = (0, 0)) -> None:
    """A folder a sandbox may fill: a disk as large as the limit (kernel enforcement), else a plain folder."""
    if kernel_limited(limits):
        make_disk(path, limits.disk_limit, owner=owner)
        return
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, *owner)


def check_workspace(path: Path, limits: SandboxLimits) -> None:
    """Refuse a workspace the kernel does not keep within the limit (one not made by ``create_workspace``)."""
    if kernel_limited(limits) and not is_disk(path, limits.disk_limit):
        raise SandboxUnavailableError(
            f"the workspace {path} is not a disk of its own of at most {limits.disk_limit} bytes: make it with the "
            "backend's create_workspace (kernel-enforced disk limits, see docs/sandbox.md)"
        )


def keep_environment(staging: Path, final: Path) -> int:
    """Copy a set-up's environment folder (``opt``, which may be a disk, and the files beside it) to
    ``final``, a plain folder, with no setuid or setgid bit left; return its size in bytes."""
    temporary = staging / ".kept"  # inside the staging folder: if the worker dies now, the reaper takes both
    remove_folder(temporary)
    temporary.mkdir()
    for entry in staging.iterdir():
        if entry.name.endswith(DISK_SUFFIX) or entry == temporary:
            continue
        # cp -a: symlinks stay links, a FIFO stays a FIFO (never read), hard links and holes are kept.
        _run(["cp", "-a", "--", str(entry), str(temporary / entry.name)])
    size = 0
    for root, dirs, files in os.walk(temporary):
        for name in (*dirs, *files):
            info = os.lstat(os.path.join(root, name))
            size += info.st_blocks * 512
            if not stat.S_ISLNK(info.st_mode) and info.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(os.path.join(root, name), stat.S_IMODE(info.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
    remove_folder(final)
    try:
        temporary.rename(final)
    except OSError:  # another set-up of the same key was kept at the same moment: its copy serves
        remove_folder(temporary)
        if not final.is_dir():
            raise
    return size


def probe_kernel_disks(folder: Path) -> str | None:
    """Why disks cannot be made under ``folder``, found by making (and removing) a small one; None if they can."""
    reason = kernel_disks_unavailable()
    if reason is not None:
        return reason
    probe = folder / f".disk-probe-{os.getpid()}"
    try:
        make_disk(probe, 16 * 2**20)
        if not is_disk(probe, 16 * 2**20):
            return f"{probe} was made but is not a filesystem of its own"
    except (SandboxError, OSError) as exc:
        return str(exc)
    finally:
        remove_folder(probe)
    return None
