"""What the exec server (``execserver.py``) needs of the kernel: its privileges, its processes, its disks
and files. Standard library only, copied into every sandbox's control folder beside the server.
"""

import collections
import contextlib
import ctypes
import errno
import os
import signal
import stat
import subprocess
import time

CHUNK = 65536
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
LIBC = ctypes.CDLL(None, use_errno=True)
FORK_RETRIES = 30


class Capture:
    """Keeps the head and the tail of a stream, counting what falls between them."""

    def __init__(self, limit):
        self.half = max(limit // 2, 1)
        self.head = bytearray()
        self.tail = collections.deque()
        self.tail_size = 0
        self.omitted_bytes = 0
        self.omitted_lines = 0

    def feed(self, data):
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if not data:
            return
        self.tail.append(data)
        self.tail_size += len(data)
        while self.tail_size - len(self.tail[0]) >= self.half:
            dropped = self.tail.popleft()
            self.tail_size -= len(dropped)
            self.omitted_bytes += len(dropped)
            self.omitted_lines += dropped.count(b"\n")

    def text(self):
        tail = b"".join(self.tail)
        if self.tail_size > self.half:
            cut = self.tail_size - self.half
            self.omitted_bytes += cut
            self.omitted_lines += tail[:cut].count(b"\n")
            tail = tail[cut:]
            self.tail.clear()
            self.tail.append(tail)
            self.tail_size = len(tail)
        head = bytes(self.head).decode("utf-8", errors="replace")
        rest = tail.decode("utf-8", errors="replace")
        if self.omitted_bytes:
            marker = f"\n[... {self.omitted_lines} lines / {self.omitted_bytes} bytes omitted ...]\n"
            return head + marker + rest
        return head + rest


def disk_full(path):
    """A filesystem of its own (``--disk-kernel``) is full: the kernel refused, or is about to refuse, a write."""
    info = os.statvfs(path)
    margin = min(2**20, info.f_blocks * info.f_frsize // 64)
    return info.f_bavail * info.f_frsize < margin or info.f_favail == 0


def disk_usage(root):
    total = 0
    stack = [root]
    while stack:
        path = stack.pop()
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += info.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
    return total


def kill_session(sid):
    """Kill every process of the command's session, including ones that left its process group."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
            if int(fields[3]) == sid:
                os.kill(int(name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue
    with contextlib.suppress(OSError):
        os.killpg(sid, signal.SIGKILL)


def open_regular(path):
    """A regular file, opened without blocking (a FIFO would hang the reader; /dev/zero never ends)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        code = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
        raise OSError(code, "Is a directory" if code == errno.EISDIR else "not a regular file", path)
    return os.fdopen(fd, "rb")


def skip_lines(handle, lines):
    """Move past ``lines`` newlines (or to the end); return the newlines passed and the last byte read."""
    passed, last = 0, b""
    while passed < lines:
        chunk = handle.read(CHUNK)
        if not chunk:
            break
        found = chunk.count(b"\n")
        if passed + found < lines:
            passed, last = passed + found, chunk[-1:]
            continue
        index = -1
        for _ in range(lines - passed):
            index = chunk.index(b"\n", index + 1)
        handle.seek(index + 1 - len(chunk), os.SEEK_CUR)
        return lines, b"\n"
    return passed, last


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def _check(result, what):
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def lock_down(seccomp_path):
    """Before anything else runs: no execve may gain privileges, and the seccomp filter the worker compiled
    applies to this server and to every process it starts.

    The server's three capabilities stay ambient: every command is started through ``/usr/bin/setpriv``
    (``command_argv``), which needs them to take the commands' uid and drops them all before it runs
    anything else. Starting that way lets Python use vfork; switching uids in the child itself would make it
    fork the whole server, a millisecond a command."""
    _check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    if not seccomp_path:
        return
    with open(seccomp_path, "rb") as handle:
        program = handle.read()
    count = len(program) // 8
    filters = (SockFilter * count).from_buffer_copy(program)
    fprog = SockFprog(count, ctypes.cast(filters, ctypes.POINTER(SockFilter)))
    _check(LIBC.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp filter")


def act_as(uid, gid):
    """File operations of the calling thread are checked (and new files owned) as ``uid``: the server reads
    and writes the workspace with the commands' rights, never its own (setfsuid is per thread)."""
    if uid is None:
        return
    LIBC.setfsgid(gid)
    LIBC.setfsuid(uid)
    if LIBC.setfsuid(uid) != uid:
        raise OSError(1, f"cannot act as uid {uid}")


def reap_as_init():
    """As pid 1 of a container: fork the server, then reap every orphan until it exits (the kernel gives
    pid 1 every process whose parent died, and an unreaped one would hold a pid slot for good)."""
    child = os.fork()
    if child == 0:
        return
    signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGKILL))
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(0)
        if pid == child:
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def process_owner_and_session(pid):
    """Its uid and session id, or None for a zombie (dead already, only waiting to be reaped)."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    if fields[0] == b"Z":
        return None
    return os.stat(f"/proc/{pid}").st_uid, int(fields[3])


SETPRIV = "/usr/bin/setpriv"
"""Absolute: never one a command's PATH names (an environment's venv comes first there)."""
UNSAFE_ENV = ("LD_", "GCONV_PATH", "LOCPATH", "MALLOC_", "GLIBC_TUNABLES", "NLSPATH", "HOSTALIASES", "RES_OPTIONS")
"""What the dynamic loader or libc act on: setpriv still holds the capabilities while it starts."""


def command_argv(command, uid, gid, spawn=None):
    """``bash -c command`` as ``uid``/``gid`` with no supplementary groups and no capabilities left in any set:
    through ``spawn`` (overnight-spawn, beside the server) when the worker could compile it, else setpriv."""
    if uid is None:
        return ["bash", "-c", command]
    if spawn is not None:
        return [spawn, str(uid), str(gid), "/bin/bash", "-c", command]
    return [SETPRIV, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
            "--ambient-caps=-all", "--", "bash", "-c", command]  # fmt: skip


def safe_env(env):
    """``env`` without the variables that would run code inside setpriv before it drops its capabilities."""
    return {name: value for name, value in env.items() if not name.startswith(UNSAFE_ENV)}


def popen_retrying(argv, cwd, env, stdin):
    """Start ``argv`` in a session of its own, trying again while the pid limit is full."""
    for attempt in range(FORK_RETRIES):
        try:
            return subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True,
            )  # fmt: skip
        except BlockingIOError:  # the pid limit is full: killed processes may still be on their way out
            if attempt == FORK_RETRIES - 1:
                raise
            time.sleep(0.1)
