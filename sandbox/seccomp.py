"""The seccomp filter every sandbox's exec server installs on itself (and so on every command it starts),
on top of whatever the backend brings (Docker's default profile; bubblewrap has none of its own).

It refuses what a coding task never needs and what a way out of the sandbox usually starts with: new
namespaces (``unshare``, ``setns``, namespace flags to ``clone``; ``clone3``, whose flags seccomp cannot
read, answers ENOSYS so that libc falls back to ``clone``), the kernel keyring, mounts, BPF, perf events,
userfaultfd, io_uring, module loading, and setuid/setgid bits on files (``chmod`` and friends, ``open``
and ``mknod`` with such a mode), so that nothing a task leaves in its workspace is ever setuid on the host.
``ptrace`` stays allowed: a command may debug its own children, and the exec server runs as another uid,
which the kernel already keeps out of reach.

The filter is compiled on the worker with libseccomp (through ``pyseccomp``) for the worker's own
architecture; system calls of any other architecture kill the caller.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import tempfile

import pyseccomp as seccomp

DENIED = (
    "unshare", "setns", "keyctl", "add_key", "request_key", "mount", "umount2", "pivot_root", "move_mount",
    "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "bpf", "perf_event_open",
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "open_by_handle_at", "name_to_handle_at", "swapon", "swapoff",
    "reboot", "acct", "quotactl", "syslog", "iopl", "ioperm", "lookup_dcookie", "personality",
)  # fmt: skip
NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080)
"""CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME."""
SETID_BITS = (stat.S_ISUID, stat.S_ISGID)
MODE_ARGUMENT = {"chmod": 1, "fchmod": 1, "fchmodat": 2, "fchmodat2": 2, "creat": 1, "open": 2, "openat": 3,
                 "mkdir": 1, "mkdirat": 2, "mknod": 1, "mknodat": 2}  # fmt: skip
"""Where each call that sets a file's mode takes it."""


@functools.cache
def filter_bpf() -> bytes:
    """The compiled filter (classic BPF, as ``prctl(PR_SET_SECCOMP)`` takes it)."""
    deny = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in DENIED:
        _add(rules, deny, name)
    _add(rules, seccomp.ERRNO(errno.ENOSYS), "clone3")
    for flag in NAMESPACE_FLAGS:
        _add(rules, deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    for name, index in MODE_ARGUMENT.items():
        for bit in SETID_BITS:
            _add(rules, deny, name, seccomp.Arg(index, seccomp.MASKED_EQ, bit, bit))
    with tempfile.TemporaryFile() as handle:
        rules.export_bpf(handle)
        handle.seek(0)
        return handle.read()


def _add(rules: seccomp.SyscallFilter, action: int, name: str, *args: seccomp.Arg) -> None:
    try:
        rules.add_rule(action, name, *args)
    except (ValueError, RuntimeError, OSError):  # a call this architecture does not have (open on arm64)
        if _known(name):
            raise


def _known(name: str) -> bool:
    try:
        return int(seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)) >= 0
    except (ValueError, RuntimeError, OSError):
        return False


def write_filter(folder: os.PathLike[str] | str, name: str = "seccomp.bpf") -> str:
    """Write the filter into ``folder`` (a sandbox's control folder); return the file's name."""
    path = os.path.join(folder, name)
    with open(path, "wb") as handle:
        handle.write(filter_bpf())
    os.chmod(path, 0o444)
    return name
