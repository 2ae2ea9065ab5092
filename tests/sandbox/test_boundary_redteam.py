"""Red-team findings against the sandbox's promises (docs/sandbox.md, "Threat model"), through the real backends.

Each test is a hole found by attacking the sandbox as a hostile command would, now closed: the test keeps it so.
Probes never harm the host.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sandbox.base import Sandbox, SandboxBackend, SandboxError, SandboxSpec

# Daemons that leave their command's session, each forking a child and exiting, over and over: the process is
# never for long at a pid a one-pass scan of /proc listed.
RUNNER = """
import os, sys, time
for _ in range(int(sys.argv[1])):
    if os.fork() == 0:
        break
else:
    os._exit(0)
os.setsid()
while True:
    try:
        if os.fork():
            os._exit(0)
    except OSError:
        time.sleep(0.01)
"""

# Holds every pid slot of the sandbox's cgroup while the command runs.
PID_HOG = """
import os, time
while True:
    try:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
    except OSError:
        break
open("/workspace/full", "w").close()
time.sleep(20)
"""


def test_a_daemon_that_keeps_forking_away_dies_with_its_command(
    backend: SandboxBackend, new_workspace: Callable[..., Path]
) -> None:
    box = backend.start(SandboxSpec(task_id="redteam-runner", workspace=new_workspace(backend)))
    try:
        box.write_file("runner.py", RUNNER.encode())
        survivors = []
        for _ in range(5):  # the escape is a race; it is won in most tries
            box.run("python3 runner.py 32 > /dev/null 2>&1 < /dev/null", timeout=30)
            count = box.run("sleep 1; pgrep -c -f '^python3 runner.py' || true").stdout.strip()
            survivors.append(int(count or 0))
            if survivors[-1]:
                break
        assert survivors[-1] == 0, f"daemons alive after their command ended, per try: {survivors}"
    finally:
        box.close()


def test_a_command_that_fills_the_pid_limit_does_not_kill_the_exec_server(
    backend: SandboxBackend, new_workspace: Callable[..., Path]
) -> None:
    workspace = new_workspace(backend)
    box = backend.start(SandboxSpec(task_id="redteam-pids", workspace=workspace))
    try:
        box.write_file("hog.py", PID_HOG.encode())
        thread = threading.Thread(target=_run_quietly, args=(box, "python3 hog.py"), daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (workspace / "full").exists():
            time.sleep(0.2)
        assert (workspace / "full").exists(), "the hog never filled the pid limit"
        box.interrupt()  # a cancelled task: the worker must still be able to stop the command
        thread.join(timeout=60)
        assert box.run("echo still answering").stdout == "still answering\n"
    finally:
        box.close()


def _run_quietly(box: Sandbox, command: str) -> None:
    with contextlib.suppress(SandboxError):
        box.run(command, timeout=40)
