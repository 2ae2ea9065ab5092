"""The exec server: runs inside every sandbox, answers one JSON request per Unix-socket connection.

Standard library only (it runs on the sandbox image's python3), so it must not import anything from this
project. Requests and answers are single JSON lines; the host side builds and checks them with the pydantic
models in ``sandbox/protocol.py``.

Why a server instead of ``docker exec``: one exec costs about 50-70 ms, a request here a few milliseconds,
and it works the same under Docker and bubblewrap, with the network off.
"""

import argparse
import base64
import collections
import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import threading
import time

CHUNK = 65536
DRAIN_SECONDS = 0.2
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


class Server:
    def __init__(self, args):
        self.running = set()
        self.running_lock = threading.Lock()
        self.workdir = args.workdir
        self.disk_limit = args.disk_limit
        self.disk_paths = args.disk_path or [args.workdir]
        """What counts toward the limit: the workspace; for a set-up, also what it may fill outside it."""
        self.deadline = time.time() + args.lifetime if args.lifetime else None
        self.disk_exceeded = False
        os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)

    def disk_used(self):
        return sum(disk_usage(path) for path in self.disk_paths)

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
        with open(request["path"], "rb") as handle:
            return {"content": base64.b64encode(handle.read()).decode()}

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
        command = request["command"]
        env = dict(os.environ)
        env.update(request.get("env") or {})
        if request.get("session"):
            env["__OV_STATE"] = STATE_DIR
            command = SESSION_PROLOGUE + command + "\n"
        if self.disk_limit:  # no file may outgrow the workspace's limit (ulimit -f counts KiB)
            command = f"ulimit -f {self.disk_limit // 1024}\n{command}"
        limit = request.get("output_limit") or 32000
        timeout = float(request.get("timeout") or 300)
        if self.deadline is not None:
            timeout = min(timeout, max(self.deadline - time.time(), 0.1))
        started = time.monotonic()

        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=request.get("cwd") or self.workdir,
            env=env,
            stdin=subprocess.PIPE if request.get("stdin") is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        with self.running_lock:
            self.running.add(process.pid)
        if request.get("stdin") is not None:
            try:
                process.stdin.write(base64.b64decode(request["stdin"]))
                process.stdin.close()
            except BrokenPipeError:
                pass
        outputs = {"stdout": Capture(limit), "stderr": Capture(limit)}
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ, "stdout")
        selector.register(process.stderr, selectors.EVENT_READ, "stderr")
        timed_out = disk = False
        next_disk_check = started + 1.0
        open_streams = 2
        drain_until = None
        while open_streams:
            now = time.monotonic()
            if now - started > timeout:
                timed_out = True
                break
            if drain_until is None and process.poll() is not None:
                # The command is done; a background child may still hold its pipes: read briefly, then stop.
                drain_until = now + DRAIN_SECONDS
            if drain_until is not None and now > drain_until:
                break
            if self.disk_limit and now >= next_disk_check:
                next_disk_check = now + 1.0
                if self.disk_used() > self.disk_limit:
                    disk = True
                    break
            for key, _ in selector.select(timeout=0.05 if drain_until else 0.2):
                data = os.read(key.fileobj.fileno(), CHUNK)
                if data:
                    outputs[key.data].feed(data)
                else:
                    selector.unregister(key.fileobj)
                    open_streams -= 1
        if timed_out or disk:
            kill_session(process.pid)
        try:
            exit_code = process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            kill_session(process.pid)
            exit_code = process.wait()
        if not (timed_out or disk):
            kill_session(process.pid)  # background leftovers must not outlive their command
        with self.running_lock:
            self.running.discard(process.pid)
        selector.close()
        process.stdout.close()
        process.stderr.close()
        if self.disk_limit and not disk and self.disk_used() > self.disk_limit:
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


def serve(args):
    server = Server(args)
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(args.socket + ".tmp")
    os.chmod(args.socket + ".tmp", 0o600)
    os.rename(args.socket + ".tmp", args.socket)  # appears only once it accepts
    listener.listen(8)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        connection, _ = listener.accept()
        # One thread a connection: an interrupt must get through while a command runs.
        threading.Thread(target=answer, args=(server, connection), daemon=True).start()


def answer(server, connection):
    with connection:
        line = connection.makefile("rb").readline()
        try:
            reply = server.handle(json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"error": "bad_request", "message": str(exc)}
        with contextlib.suppress(OSError):
            connection.sendall(json.dumps(reply).encode() + b"\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--workdir", default="/workspace")
    parser.add_argument("--disk-limit", type=int, default=0)
    parser.add_argument("--disk-path", action="append", default=[], help="counted toward --disk-limit (repeatable)")
    parser.add_argument("--lifetime", type=float, default=0)
    serve(parser.parse_args())


if __name__ == "__main__":
    main()
