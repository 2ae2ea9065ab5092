"""The sandbox as a security boundary, attacked from inside through the real backends (Docker and bubblewrap).

Every test here is a command a hostile model could write. Probes never harm the host: writability is
checked with ``test -w``, no kernel setting is ever written.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox.base import Sandbox, SandboxBackend, SandboxError, SandboxSpec
from sandbox.bwrap import BwrapSandbox
from sandbox.disk import remove_folder
from sandbox.docker import DockerSandbox
from sandbox.image import SANDBOX_UID, SERVER_UID
from sandbox.runtime import ANSWER_LIMIT, SocketRuntime

SECRETS = {
    "OVERNIGHT_GITHUB_TOKEN": "ghp-boundary-test-token-1f2e3d",
    "OVERNIGHT_LLM_API_KEY": "llm-boundary-test-key-9a8b7c",
    "OVERNIGHT_DATABASE_URL": "postgresql://overnight:pg-boundary-secret@db/overnight",
    "GIT_CONFIG_VALUE_0": "Authorization: Bearer git-boundary-secret",
}
KERNEL_KNOBS = ("kernel/core_pattern", "kernel/hostname", "vm/drop_caches", "kernel/modprobe", "fs/suid_dumpable")


@pytest.fixture(params=["agent", "setup"])
def box(
    backend: SandboxBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Sandbox]:
    """An agent sandbox, and a set-up sandbox (its /opt/overnight writable and kept: a set-up script is as
    hostile as any command)."""
    for name, value in SECRETS.items():  # the worker's own environment holds secrets
        monkeypatch.setenv(name, value)
    workspace = tmp_path / "workspace"
    backend.create_workspace(workspace)
    request.addfinalizer(lambda: remove_folder(workspace))
    spec = SandboxSpec(task_id="boundary", workspace=workspace, lifetime=600, purpose=request.param)
    sandbox = backend.start(spec)
    try:
        yield sandbox
    finally:
        sandbox.close()


def host_pids(sandbox: Sandbox) -> list[int]:
    """Every process of the sandbox, as host pids."""
    if isinstance(sandbox, DockerSandbox):
        top = sandbox.container.top(ps_args="-eo pid")
        return [int(row[0]) for row in top["Processes"]]
    assert isinstance(sandbox, BwrapSandbox)
    return sandbox.cgroup.pids()


def test_no_sandbox_process_is_host_root_and_no_kernel_setting_is_writable(box: Sandbox) -> None:
    box.run("sleep 30 &", timeout=5)  # a command's process is there too while we look
    busy = threading.Thread(target=box.run, args=("sleep 2",), daemon=True)
    busy.start()
    pids = host_pids(box)
    assert pids
    for pid in pids:
        with open(f"/proc/{pid}/status") as status:
            uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
        assert "0" not in uids, f"host pid {pid} runs as host root: {uids}"
    busy.join()
    probes = " ".join(f"test -w /proc/sys/{knob} && echo {knob};" for knob in KERNEL_KNOBS)
    # ns_last_pid is mode 0666 everywhere and belongs to the sandbox's own pid namespace (writing it needs
    # CAP_SYS_ADMIN there); anything else writable would be a host-wide knob.
    result = box.run(
        f"{probes} find /proc/sys /sys -writable -type f ! -path /proc/sys/kernel/ns_last_pid 2>/dev/null | head -5"
    )
    assert result.stdout.strip() == "", result.stdout
    assert box.run("id -u").stdout.strip() == str(SANDBOX_UID)


def test_files_made_in_the_workspace_are_never_setuid_on_the_host(box: Sandbox, tmp_path: Path) -> None:
    attempts = [
        "cp /bin/sh suid && chmod 4755 suid",
        "cp /bin/sh sgid && chmod g+s sgid",
        "install -m 6755 /bin/sh installed",
        "python3 -c 'import os; os.close(os.open(\"opened\", os.O_CREAT | os.O_WRONLY, 0o4755))'",
        "python3 -c 'import os; os.mkdir(\"dir\", 0o2775)'",
    ]
    for attempt in attempts:
        box.run(attempt)
    made = [path for path in (tmp_path / "workspace").iterdir()]
    assert made
    for path in made:
        info = path.lstat()
        assert not info.st_mode & (stat.S_ISUID | stat.S_ISGID), f"{path.name}: {stat.filemode(info.st_mode)}"
        assert info.st_uid == SANDBOX_UID  # the sandbox's own unprivileged uid on the host, never root


def test_no_worker_secret_reaches_any_sandbox_process(box: Sandbox) -> None:
    box.run("sleep 30 &", timeout=5)
    inside = box.run("cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'; env").stdout
    for pid in host_pids(box):  # seen from the host, every process, the exec server's too
        with open(f"/proc/{pid}/environ", "rb") as environ:
            inside += environ.read().decode(errors="replace")
    for name, value in SECRETS.items():
        assert value not in inside, f"{name} reached the sandbox"
    assert "OVERNIGHT_" not in inside


def test_namespaces_keyrings_and_mounts_are_refused(box: Sandbox) -> None:
    result = box.run(
        "unshare -U true || echo userns-refused; unshare -n true || echo netns-refused;"
        " python3 -c 'import ctypes, os; libc = ctypes.CDLL(None, use_errno=True);"
        ' r = libc.syscall(250, 0, b"user", b"x", 1, 0); print("keyctl", r, ctypes.get_errno())\';'
        " mount -t tmpfs none /tmp 2>/dev/null || echo mount-refused"
    )
    assert "userns-refused" in result.stdout and "netns-refused" in result.stdout
    assert "mount-refused" in result.stdout
    assert "keyctl -1 1" in result.stdout  # EPERM from the filter (add_key, syscall 248/250 on x86-64)


def test_commands_cannot_reach_replace_or_kill_the_exec_server(box: Sandbox) -> None:
    result = box.run(
        "test -w /overnight && echo control-writable;"
        " test -w /overnight/exec.sock && echo socket-writable;"
        " python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.connect(\"/overnight/exec.sock\")'"
        " 2>/dev/null && echo connected;"
        " mv /overnight/exec.sock /tmp/x 2>/dev/null && echo moved;"
        " kill -9 $(pgrep -d ' ' -u 999) 2>/dev/null && echo killed; echo done"
    )
    assert result.stdout.strip() == "done", result.stdout
    assert box.run("echo still answering").stdout == "still answering\n"


def test_a_daemon_that_leaves_its_session_dies_with_its_command(box: Sandbox) -> None:
    """The forging daemon of the issue: it setsids away, waits, then tries to bind its own exec.sock."""
    forger = (
        "import os, socket, time\n"
        "time.sleep(0.5)\n"
        "for _ in range(100):\n"
        "    try:\n"
        "        os.unlink('/overnight/exec.sock')\n"
        "    except OSError:\n"
        "        pass\n"
        "    try:\n"
        "        s = socket.socket(socket.AF_UNIX); s.bind('/overnight/exec.sock'); s.listen(); break\n"
        "    except OSError:\n"
        "        time.sleep(0.1)\n"
        "open('/tmp/forger-alive', 'w').write('yes')\n"
        "time.sleep(60)\n"
    )
    box.write_file("forger.py", forger.encode())
    box.run("setsid python3 forger.py > /dev/null 2>&1 < /dev/null & disown; sleep 0.1")
    result = box.run("sleep 1; pgrep -f '[f]orger.py' || echo gone; cat /tmp/forger-alive 2>/dev/null || echo never")
    assert "gone" in result.stdout and "never" in result.stdout, result.stdout
    assert box.run("echo genuine").stdout == "genuine\n"


def test_the_worker_refuses_a_socket_that_is_not_the_servers(tmp_path: Path) -> None:
    """Seen from the worker: a symlink to another socket, or a socket of another owner, is never used."""
    decoy = tmp_path / "decoy.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(decoy))
    listener.listen()
    link = tmp_path / "exec.sock"
    link.symlink_to(decoy)
    runtime = SocketRuntime(link, default_timeout=5, on_close=lambda: None)
    with pytest.raises(SandboxError, match="not a socket owned by uid"):
        runtime.run("true")
    link.unlink()
    os.rename(decoy, link)  # a real socket, but root's (a command's would be uid 1000's)
    with pytest.raises(SandboxError, match=f"not a socket owned by uid {SERVER_UID}"):
        runtime.run("true")
    listener.close()


def test_an_oversized_answer_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "exec.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    os.chown(path, SERVER_UID, SERVER_UID)
    listener.listen()
    sent: list[int] = []

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            chunk = b"x" * 2**20
            try:
                for _ in range(ANSWER_LIMIT // len(chunk) + 64):
                    connection.sendall(chunk)
                    sent.append(len(chunk))
            except OSError:
                pass  # the worker hung up

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    runtime = SocketRuntime(path, default_timeout=5, on_close=lambda: None)
    with pytest.raises(SandboxError, match="larger than"):
        runtime.run("true")
    thread.join(timeout=10)
    listener.close()
    assert sum(sent) < ANSWER_LIMIT + 64 * 2**20  # it stopped reading: the rest never left the server


def test_one_sandbox_cannot_see_or_signal_another(backend: SandboxBackend, new_workspace: Callable[..., Path]) -> None:
    """Two tasks on one worker: neither sees the other's workspace, files, processes or temporary files."""
    first = backend.start(SandboxSpec(task_id="tenant-a", workspace=new_workspace(backend, name="a")))
    second = backend.start(SandboxSpec(task_id="tenant-b", workspace=new_workspace(backend, name="b")))
    try:
        second.run("echo secret > marker-of-b && echo secret > /tmp/tmp-of-b && sleep 60 > /dev/null &", timeout=5)
        background = threading.Thread(target=second.run, args=("sleep 3",), daemon=True)
        background.start()
        seen = first.run(
            "find / -xdev \\( -name marker-of-b -o -name tmp-of-b \\) 2>/dev/null; find /tmp /workspace"
            " /home -name '*-of-b' 2>/dev/null; ps -eo args | grep -c '[s]leep 3'"
        ).stdout.split()
        assert seen == ["0"], seen  # no file of b's anywhere, and none of b's processes
        background.join()
    finally:
        first.close()
        second.close()


def test_commands_hold_no_capability_and_no_loader_variable_reaches_their_start(box: Sandbox) -> None:
    """Commands are started by setpriv, which holds the server's capabilities while it runs: nothing the loader
    acts on may reach it, and nothing of the capabilities may be left after it."""
    caps = box.run("grep -E '^Cap(Inh|Prm|Eff|Amb)' /proc/self/status").stdout.split()
    assert caps[1::2] == ["0000000000000000"] * 4, caps
    result = box.run(
        "echo ${LD_PRELOAD:-none} ${LD_LIBRARY_PATH:-none}",
        env={"LD_PRELOAD": "/tmp/evil.so", "LD_LIBRARY_PATH": "/tmp"},
    )
    assert result.stdout.split() == ["none", "none"] and "evil" not in result.stderr


def test_without_a_compiler_commands_start_through_setpriv_with_the_same_rights(
    backend: SandboxBackend, new_workspace: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker host with no C compiler ships no overnight-spawn: setpriv does the same, a little slower."""
    monkeypatch.setattr("sandbox.runtime.spawn_helper", lambda: None)
    sandbox = backend.start(SandboxSpec(task_id="no-spawn", workspace=new_workspace(backend)))
    try:
        assert sandbox.run("test -e /overnight/overnight-spawn || echo absent").stdout == "absent\n"
        result = sandbox.run("id -u; grep -E '^Cap(Inh|Prm|Eff|Amb)' /proc/self/status")
        assert result.stdout.split()[0] == str(SANDBOX_UID)
        assert result.stdout.split()[2::2] == ["0000000000000000"] * 4, result.stdout
    finally:
        sandbox.close()
