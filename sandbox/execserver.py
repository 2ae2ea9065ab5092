"""The exec server: runs inside every sandbox, answers one JSON request per Unix-socket connection.

Standard library only (it runs on the sandbox image's python3), so it must not import anything from this
project. Requests and answers are single JSON lines; the host side builds and checks them with the pydantic
models in ``sandbox/protocol.py``.

Why a server instead of ``docker exec``: one exec costs about 50-70 ms, a request here a few milliseconds,
and it works the same under Docker and bubblewrap, with the network off.
"""

import argparse
import base64
import contextlib
import json
import os
import queue
import selectors
import shlex
import signal
import socket
import subprocess
import threading
import time

# Beside this file in the control folder (python puts a script's own folder first on sys.path).
from execsupport import (  # type: ignore[import-not-found]
    CHUNK,
    Capture,
    act_as,
    command_argv,
    disk_full,
    disk_usage,
    kill_session,
    lock_down,
    open_regular,
    popen_retrying,
    process_owner_and_session,
    reap_as_init,
    safe_env,
    skip_lines,
)

READ_CHUNK = 2**20
"""Bytes of a file one answer carries at most (the worker reads larger files in pieces)."""
LINE_SCAN = 64 * 2**20
"""Bytes read past a window of lines to count the file's lines; a longer file's count is left open."""
DRAIN_SECONDS = 0.2
STRAY_PASSES = 20
_HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "overnight-spawn")
SPAWN = _HELPER if os.access(_HELPER, os.X_OK) else None
"""overnight-spawn beside the server (the worker compiled it), else None: commands start through setpriv."""
HANDLERS = 16
"""Threads started before any command runs: a command that fills the pid limit cannot stop the server from
answering (an interrupt must get through)."""
STATE_DIR = "/tmp/.overnight-session"
# Session wrapper: restore the previous call's working directory and exported variables, save them on exit
# (also when the command calls `exit`). Killed commands save nothing: the previous state stays.
# Builtins only: no process is forked for the bookkeeping.
SESSION_PROLOGUE = r"""
__ov_save() {
  __ov_rc=$?
  { export -p > "$__OV_STATE/env"; pwd > "$__OV_STATE/cwd"; } 2>/dev/null
  exit $__ov_rc
}
trap __ov_save EXIT
[ -r "$__OV_STATE/env" ] && . "$__OV_STATE/env" 2>/dev/null
[ -r "$__OV_STATE/cwd" ] && { read -r __ov_cwd < "$__OV_STATE/cwd"; cd "$__ov_cwd" 2>/dev/null; }
"""


class Server:
    def __init__(self, args):
        self.running = set()
        self.starting = 0
        """Commands being started: not yet in ``running``, but no longer strays to kill."""
        self.running_lock = threading.Lock()
        self.workdir = args.workdir
        self.disk_limit = args.disk_limit
        self.disk_paths = args.disk_path or [args.workdir]
        """What counts toward the limit: the workspace; for a set-up, also what it may fill outside it."""
        self.deadline = time.time() + args.lifetime if args.lifetime else None
        self.disk_exceeded = False
        self.disk_kernel = args.disk_kernel
        self.command_uid = args.command_uid
        self.command_gid = args.command_gid if args.command_gid is not None else args.command_uid
        self.separate = self.command_uid is not None and self.command_uid != os.geteuid()
        """Commands run as a uid of their own: they cannot signal, trace or replace this server."""
        os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)

    def disk_over(self):
        """Past the limit: one of the paths is full (each a filesystem of its own that the kernel keeps within
        the limit), or, measured, they hold more than it together."""
        if self.disk_kernel:
            return any(disk_full(path) for path in self.disk_paths)
        return sum(disk_usage(path) for path in self.disk_paths) > self.disk_limit

    def handle(self, request):
        kind = request.get("type")
        if self.deadline is not None and time.time() > self.deadline and kind != "ping":
            return {"error": "expired", "message": "the sandbox outlived its time limit"}
        if self.disk_exceeded and kind in ("run", "write_file"):
            paths = ", ".join(self.disk_paths)
            return {"error": "disk", "message": f"{paths} exceeded the disk limit ({self.disk_limit} bytes)"}
        handler = getattr(self, f"do_{kind}", None)
        if handler is None:
            return {"error": "bad_request", "message": f"unknown request type {kind!r}"}
        try:
            return handler(request)
        except OSError as exc:
            return {"error": "os", "message": f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")}

    def kill_strays(self):
        """Kill the commands' processes that belong to no running command: daemons that left their
        command's session (setsid, double fork) end with the command that started them."""
        if not self.separate:
            return
        with self.running_lock:
            if not self.running and not self.starting:
                # No command runs: every process of the namespace but init and this server goes, in one call
                # the kernel makes under a lock that fork also needs, so nothing can fork its way past it.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(-1, signal.SIGKILL)
            sessions = set(self.running)
        for _ in range(STRAY_PASSES):  # spare running commands' sessions; scan until a pass finds none
            found = False
            for name in os.listdir("/proc"):
                if not name.isdigit():
                    continue
                try:
                    found_process = process_owner_and_session(name)
                    if found_process is None:
                        continue
                    owner, sid = found_process
                    if owner == self.command_uid and sid not in sessions:
                        os.kill(int(name), signal.SIGKILL)
                        found = True
                except (OSError, ValueError, IndexError):
                    continue
            if not found:
                return

    def do_ping(self, request):
        return {"ok": True, "pid": os.getpid(), "uid": os.getuid()}

    def do_interrupt(self, request):
        """Kill every command running now (a cancelled task); later requests work as before."""
        with self.running_lock:
            sessions = list(self.running)
        for sid in sessions:
            kill_session(sid)
        return {"interrupted": len(sessions)}

    def do_read_file(self, request):
        """At most READ_CHUNK bytes of a regular file from ``offset``: the worker streams a file in pieces."""
        length = min(int(request["length"]), READ_CHUNK)
        with open_regular(request["path"]) as handle:
            handle.seek(int(request.get("offset") or 0))
            content = handle.read(length)
            return {"content": base64.b64encode(content).decode(), "size": os.fstat(handle.fileno()).st_size}

    def do_read_lines(self, request):
        """Lines ``first`` to ``first + count - 1`` of a text file, at most ``max_bytes`` of them (a longer
        line is cut), and the number of lines in the file when it ends within LINE_SCAN bytes after them."""
        first, count, room = int(request["first"]), int(request["count"]), min(int(request["max_bytes"]), READ_CHUNK)
        with open_regular(request["path"]) as handle:
            size = os.fstat(handle.fileno()).st_size
            answer = {"first": first, "count": 0, "total": None, "cut": False, "binary": False, "size": size}
            if b"\0" in handle.read(8192):
                return dict(answer, content="", binary=True)
            handle.seek(0)
            newlines, last = skip_lines(handle, first - 1)
            content = bytearray()
            while answer["count"] < count and newlines == first - 1 and len(content) < room:
                line = handle.readline(room - len(content))
                if not line:
                    break
                content += line
                answer["count"] += 1
                if not line.endswith(b"\n"):  # the end of the file, or the bytes ran out within the line
                    answer["cut"], last = bool(handle.peek(1)), line[-1:]
                    break
                last = b"\n"
            newlines += content.count(b"\n")
            scanned = 0
            while scanned < LINE_SCAN:
                chunk = handle.read(CHUNK)
                if not chunk:
                    answer["total"] = newlines + (last not in (b"", b"\n"))
                    break
                newlines, last, scanned = newlines + chunk.count(b"\n"), chunk[-1:], scanned + len(chunk)
            return dict(answer, content=base64.b64encode(bytes(content)).decode())

    def do_write_file(self, request):
        path = request["path"]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        data = base64.b64decode(request["content"])
        with open(path, "wb") as handle:
            handle.write(data)
        return {"written": len(data)}

    def do_list_dir(self, request):
        return {"entries": sorted(os.listdir(request["path"]))}

    def do_run(self, request):
        """Run one command to its end, its timeout or the disk limit, and answer with its output."""
        command, env = self.wrap_command(request)
        limit = request.get("output_limit") or 32000
        timeout = float(request.get("timeout") or 300)
        if self.deadline is not None:
            timeout = min(timeout, max(self.deadline - time.time(), 0.1))
        started = time.monotonic()
        process = self.start_command(command, request.get("cwd") or self.workdir, env, request.get("stdin"))
        outputs = {"stdout": Capture(limit), "stderr": Capture(limit)}
        timed_out, disk = self.read_output(process, outputs, started, timeout)
        exit_code = self.end_command(process, killed=timed_out or disk)
        if self.disk_limit and not disk and self.disk_over():
            disk = True
        if disk:
            self.disk_exceeded = True
        return {
            "exit_code": exit_code if exit_code >= 0 else 128 - exit_code,
            "stdout": outputs["stdout"].text(),
            "stderr": outputs["stderr"].text(),
            "timed_out": timed_out,
            "disk_exceeded": disk,
            "duration": time.monotonic() - started,
        }

    def wrap_command(self, request):
        """The script bash runs (in the caller's session, under the file size limit) and its environment."""
        command = request["command"]
        env = dict(os.environ)
        env.update(request.get("env") or {})
        if request.get("session"):
            env["__OV_STATE"] = STATE_DIR
            command = SESSION_PROLOGUE + command + "\n"
        if self.disk_limit:  # no file may outgrow the workspace's limit (ulimit -f counts KiB)
            command = f"ulimit -f {self.disk_limit // 1024}\n{command}"
        return command, env

    def start_command(self, command, cwd, env, stdin):
        """Start the command in a session of its own, as the commands' uid, counted as running from the
        moment it exists (never a stray to kill), and hand it its standard input."""
        if self.separate:  # the server may not enter the commands' folders: setpriv starts in /, bash goes there
            command = f"cd -- {shlex.quote(cwd)} || exit 1\n{command}"
            cwd = "/"
        argv = command_argv(command, self.command_uid if self.separate else None, self.command_gid, SPAWN)
        with self.running_lock:
            self.starting += 1
        # setpriv must start with this thread's file uid back at the server's own: an exec whose file uid
        # differs from its effective one drops the ambient capabilities setpriv needs.
        act_as(os.geteuid(), os.getegid())
        try:
            process = popen_retrying(
                argv, cwd, safe_env(env), subprocess.PIPE if stdin is not None else subprocess.DEVNULL
            )
        finally:
            act_as(self.command_uid, self.command_gid)
            with self.running_lock:
                self.starting -= 1
        with self.running_lock:
            self.running.add(process.pid)
        if stdin is not None:
            try:
                process.stdin.write(base64.b64decode(stdin))
                process.stdin.close()
            except BrokenPipeError:
                pass
        return process

    def read_output(self, process, outputs, started, timeout):
        """Read the command's output until it is done and its pipes are drained; ``(timed_out, disk)`` says
        whether it was stopped for its time or for the disk limit instead."""
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ, "stdout")
        selector.register(process.stderr, selectors.EVENT_READ, "stderr")
        next_disk_check = started + 1.0
        open_streams = 2
        drain_until = None
        with selector:
            while open_streams:
                now = time.monotonic()
                if now - started > timeout:
                    return True, False
                if drain_until is None and process.poll() is not None:
                    # The command is done; a background child may still hold its pipes: read briefly, then stop.
                    drain_until = now + DRAIN_SECONDS
                if drain_until is not None and now > drain_until:
                    break
                if self.disk_limit and now >= next_disk_check:
                    next_disk_check = now + 1.0
                    if self.disk_over():
                        return False, True
                for key, _ in selector.select(timeout=0.05 if drain_until else 0.2):
                    data = os.read(key.fileobj.fileno(), CHUNK)
                    if data:
                        outputs[key.data].feed(data)
                    else:
                        selector.unregister(key.fileobj)
                        open_streams -= 1
        return False, False

    def end_command(self, process, killed):
        """Wait for the command (its session killed first when it was stopped), then kill whatever it left
        behind, and return its exit code."""
        if killed:
            kill_session(process.pid)
        try:
            exit_code = process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            kill_session(process.pid)
            exit_code = process.wait()
        if not killed:
            kill_session(process.pid)  # background leftovers must not outlive their command
        with self.running_lock:
            self.running.discard(process.pid)
        self.kill_strays()
        process.stdout.close()
        process.stderr.close()
        return exit_code


def serve(args):
    os.closerange(3, 65536)  # nothing the backend left open (bubblewrap's pipes) reaches a command
    if os.getpid() == 1:
        reap_as_init()
    lock_down(args.seccomp)
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(args.socket + ".tmp")  # in a folder only this server's uid may write
    os.chmod(args.socket + ".tmp", 0o600)
    listener.listen(8)
    act_as(args.command_uid, args.command_gid)  # the session folder and the home are the commands'
    server = Server(args)
    if args.home:
        seed_home(server, args.home, args.seed_home)
    act_as(os.geteuid(), os.getegid())
    if args.egress:  # the sandbox's only way out: 127.0.0.1:3128, relayed to the proxy (imported only then)
        from relay import serve_loopback  # type: ignore[import-not-found]

        serve_loopback(args.egress)
    os.rename(args.socket + ".tmp", args.socket)  # appears only once it accepts
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    connections = queue.Queue()
    for _ in range(HANDLERS):  # several at once: an interrupt must get through while a command runs
        threading.Thread(target=handle_connections, args=(server, connections), daemon=True).start()
    while True:
        connections.put(listener.accept()[0])


def handle_connections(server, connections):
    act_as(server.command_uid, server.command_gid)
    while True:
        connection = connections.get()
        try:
            answer(server, connection)
        except Exception:  # one bad request must not take a handler away
            with contextlib.suppress(OSError):
                connection.close()


def answer(server, connection):
    with connection:
        line = connection.makefile("rb").readline()
        try:
            reply = server.handle(json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"error": "bad_request", "message": str(exc)}
        with contextlib.suppress(OSError):
            connection.sendall(json.dumps(reply).encode() + b"\n")


def seed_home(server, home, seed):
    """Make the commands' home (in a tmpfs the backend mounted) and copy an environment's home into it."""
    os.makedirs(home, mode=0o700, exist_ok=True)
    if seed and os.path.isdir(seed):
        server.do_run({"command": f'cp -a "{seed}/." "{home}/" 2>/dev/null || true', "timeout": 120})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--workdir", default="/workspace")
    parser.add_argument("--disk-limit", type=int, default=0)
    parser.add_argument("--disk-path", action="append", default=[], help="counted toward --disk-limit (repeatable)")
    parser.add_argument("--disk-kernel", action="store_true", help="each --disk-path is a disk the kernel limits")
    parser.add_argument("--lifetime", type=float, default=0)
    parser.add_argument("--command-uid", type=int, help="run commands (and file operations) as this uid")
    parser.add_argument("--command-gid", type=int)
    parser.add_argument("--seccomp", help="a compiled seccomp filter to install before anything runs")
    parser.add_argument("--home", help="the commands' home directory, made at start")
    parser.add_argument("--egress", help="the egress proxy's Unix socket, served on 127.0.0.1:3128")
    parser.add_argument("--seed-home", help="a folder whose contents are copied into the home at start")
    serve(parser.parse_args())


if __name__ == "__main__":
    main()
