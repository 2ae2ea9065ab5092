"""One suite for every backend (Docker and bubblewrap): commands, files, sessions, and hostile commands —
each abuse case checks that the host and a second sandbox are unharmed."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox.base import Sandbox, SandboxBackend, SandboxDiskFullError, SandboxFileError, SandboxSpec


@pytest.fixture
def workspace(backend: SandboxBackend, new_workspace: Callable[..., Path]) -> Path:
    root = new_workspace(backend)
    (root / "hello.txt").write_text("hello\n")
    return root


@pytest.fixture
def sandbox(backend: SandboxBackend, workspace: Path) -> Iterator[Sandbox]:
    box = backend.start(SandboxSpec(task_id="suite", workspace=workspace))
    try:
        yield box
    finally:
        box.close()


@pytest.fixture
def neighbour(backend: SandboxBackend, new_workspace: Callable[..., Path]) -> Iterator[Sandbox]:
    """A second sandbox of the same backend: it must not notice what the first one suffers."""
    other = new_workspace(backend, "neighbour")
    box = backend.start(SandboxSpec(task_id="neighbour", workspace=other))
    try:
        yield box
    finally:
        box.close()


def assert_unharmed(neighbour: Sandbox) -> None:
    started = time.monotonic()
    result = neighbour.run("echo alive && python3 -c 'print(sum(range(1000)))'", timeout=30)
    assert (result.exit_code, result.stdout) == (0, "alive\n499500\n")
    assert time.monotonic() - started < 10
    assert os.system("true") == 0  # the host still forks


def test_run_reports_exit_code_streams_cwd_env_and_stdin(sandbox: Sandbox) -> None:
    result = sandbox.run("pwd; echo $GREETING; cat; echo oops >&2; exit 7", env={"GREETING": "hi"}, stdin=b"in\n")
    assert (result.exit_code, result.stdout, result.stderr) == (7, "/workspace\nhi\nin\n", "oops\n")
    assert sandbox.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    assert sandbox.run("printf '\\xff\\xfe ok'").stdout == "\ufffd\ufffd ok"
    assert sandbox.run("id -u").stdout.strip() != "0"


def test_session_keeps_cwd_and_exports_but_plain_runs_do_not(sandbox: Sandbox) -> None:
    sandbox.run("mkdir -p sub/dir && cd sub/dir && export TOKEN=abc && LOCAL=1", session=True)
    after = sandbox.run('pwd; echo "$TOKEN"; echo "${LOCAL:-unset}"', session=True)
    assert after.stdout == "/workspace/sub/dir\nabc\nunset\n"
    assert sandbox.run("pwd; echo ${TOKEN:-none}").stdout == "/workspace\nnone\n"
    sandbox.run("cd /tmp; exit 3", session=True)
    assert sandbox.run("pwd", session=True).stdout == "/tmp\n"


def test_a_hung_command_costs_only_its_timeout_and_the_next_call_works(sandbox: Sandbox) -> None:
    sandbox.run("cd sub 2>/dev/null || mkdir sub && cd sub; export KEEP=1", session=True)
    for command in ("sleep 1e9", "python3 -c 'import time; time.sleep(1e9)'", "(sleep 1e9 &) ; sleep 1e9"):
        started = time.monotonic()
        result = sandbox.run(command, timeout=1, session=True)
        assert result.timed_out and time.monotonic() - started < 8, command
    assert sandbox.run("pwd; echo $KEEP", session=True).stdout == "/workspace/sub\n1\n"
    assert sandbox.run("ps -eo comm | grep -c sleep || true").stdout.strip() == "0"
    repl = sandbox.run("python3", timeout=5)  # no terminal and stdin at EOF: the REPL ends at once
    assert not repl.timed_out


def test_output_is_capped_head_and_tail(sandbox: Sandbox) -> None:
    result = sandbox.run("seq 1 200000", output_limit=2000)
    assert result.stdout.startswith("1\n2\n3\n") and result.stdout.endswith("199999\n200000\n")
    assert "lines /" in result.stdout and "bytes omitted ...]" in result.stdout
    assert len(result.stdout) < 2200


def test_a_200_mb_output_stream_is_capped_without_hurting_anyone(sandbox: Sandbox, neighbour: Sandbox) -> None:
    result = sandbox.run("head -c 200000000 /dev/zero | tr '\\0' 'a'; echo; echo END", timeout=120, output_limit=10_000)
    assert result.exit_code == 0 and result.stdout.endswith("END\n")
    assert "bytes omitted ...]" in result.stdout and len(result.stdout) < 11_000
    assert_unharmed(neighbour)


def test_files_are_read_written_and_listed(sandbox: Sandbox, workspace: Path) -> None:
    assert sandbox.read_file("hello.txt") == b"hello\n"
    sandbox.write_file("deep/new.bin", b"\x00\x01binary")
    assert (workspace / "deep" / "new.bin").read_bytes() == b"\x00\x01binary"
    assert sandbox.list_dir(".") == ["deep", "hello.txt"]
    with pytest.raises(SandboxFileError, match="No such file"):
        sandbox.read_file("missing.txt")


def test_a_symlink_to_etc_shadow_reads_nothing_of_the_host(sandbox: Sandbox) -> None:
    """A link resolves inside the sandbox: at most the image's own /etc/shadow, never the host's."""
    host_shadow = Path("/etc/shadow").read_bytes()
    sandbox.run("ln -s /etc/shadow shadow-link")
    try:
        seen = sandbox.read_file("shadow-link")
    except SandboxFileError as exc:
        assert "Permission denied" in str(exc)
        seen = b""
    seen += sandbox.run("cat shadow-link /etc/shadow 2>&1").stdout.encode()
    host_hashes = [line.split(b":")[1] for line in host_shadow.splitlines() if line.count(b":") > 2]
    assert not any(secret in seen for secret in host_hashes if len(secret) > 2)
    assert seen != host_shadow


def test_nothing_outside_the_workspace_tmp_and_home_is_writable(sandbox: Sandbox) -> None:
    for path in ("/etc/overnight-test", "/usr/bin/overnight-test", "/overnight-test", "/opt/overnight/x"):
        assert sandbox.run(f"touch {path}").exit_code != 0, path
    assert sandbox.run("touch /tmp/ok && touch $HOME/ok && touch /workspace/ok").exit_code == 0


def test_proc_shows_only_the_sandbox(sandbox: Sandbox) -> None:
    processes = sandbox.run("ls /proc | grep -c '^[0-9]'").stdout.strip()
    assert int(processes) < 10
    assert str(os.getpid()) not in sandbox.run("ls /proc").stdout.split()
    names = sandbox.run("cat /proc/*/comm 2>/dev/null").stdout.split()
    assert not {"redis-server", "postgres", "dockerd", "containerd"} & set(names), names


def test_no_network_reaches_the_host_or_the_outside(sandbox: Sandbox) -> None:
    with socket.socket() as server:  # a port on the host's loopback
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        probe = (
            "import socket\n"
            f"for host, port in (('127.0.0.1', {port}), ('1.1.1.1', 443), ('deb.debian.org', 80)):\n"
            "    try:\n"
            "        socket.create_connection((host, port), timeout=3); print(host, 'open')\n"
            "    except OSError as e:\n"
            "        print(host, 'blocked')\n"
            "try:\n"
            "    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print('raw open')\n"
            "except OSError:\n"
            "    print('raw blocked')\n"
        )
        result = sandbox.run(f'python3 -c "{probe}"', timeout=30)
    assert result.stdout.split("\n")[:4] == [
        "127.0.0.1 blocked",
        "1.1.1.1 blocked",
        "deb.debian.org blocked",
        "raw blocked",
    ], result
    assert sandbox.run("curl -sS --max-time 3 https://pypi.org/simple/ >/dev/null").exit_code != 0


def test_a_fork_bomb_hits_the_pids_limit(sandbox: Sandbox, neighbour: Sandbox) -> None:
    result = sandbox.run("bomb() { bomb | bomb & }; bomb; sleep 5", timeout=8)
    assert result.exit_code != 0 or result.timed_out or "Resource temporarily unavailable" in result.stderr
    assert_unharmed(neighbour)
    assert sandbox.run("echo recovered", timeout=30).stdout == "recovered\n"


def test_a_memory_hog_is_killed_at_the_limit(sandbox: Sandbox, neighbour: Sandbox) -> None:
    hog = 'python3 -c "chunks = []\nwhile True: chunks.append(bytearray(64 * 2**20))"'
    result = sandbox.run(hog, timeout=60)
    assert result.exit_code in (137, 1) and not result.timed_out, result  # SIGKILL by the OOM killer, or MemoryError
    assert_unharmed(neighbour)
    assert sandbox.run("echo recovered", timeout=30).stdout == "recovered\n"


def test_a_disk_filler_fails_its_task_not_the_host(sandbox: Sandbox, neighbour: Sandbox, workspace: Path) -> None:
    free_before = shutil.disk_usage(workspace.parent).free  # the host's (the workspace is a disk of its own)
    with pytest.raises(SandboxDiskFullError, match="disk limit"):
        sandbox.run("dd if=/dev/zero of=fill bs=1M count=100000 status=none; sleep 30", timeout=120)
    assert free_before - shutil.disk_usage(workspace.parent).free < 400 * 2**20
    with pytest.raises(SandboxDiskFullError):
        sandbox.run("echo more")
    assert_unharmed(neighbour)


def test_a_set_up_that_fills_the_disk_outside_the_workspace_fails_too(
    backend: SandboxBackend, neighbour: Sandbox, workspace: Path
) -> None:
    setup = backend.start(SandboxSpec(task_id="fill-setup", workspace=workspace, purpose="setup"))
    try:
        free_before = shutil.disk_usage(workspace.parent).free
        with pytest.raises(SandboxDiskFullError, match="disk limit"):
            setup.run("dd if=/dev/zero of=/opt/overnight/fill bs=1M count=100000 status=none; sleep 30", timeout=120)
        assert free_before - shutil.disk_usage(workspace.parent).free < 400 * 2**20
    finally:
        setup.close()
    assert_unharmed(neighbour)


def test_close_twice_is_fine_and_leaves_nothing_running(backend: SandboxBackend, workspace: Path) -> None:
    box = backend.start(SandboxSpec(task_id="close", workspace=workspace))
    started = time.monotonic()
    assert box.run("sleep 1000 & echo started").stdout == "started\n"
    assert time.monotonic() - started < 5  # a background child holding the pipes does not hold the call
    box.close()
    box.close()
    with pytest.raises(Exception, match="closed"):
        box.run("true")


def test_an_expired_sandbox_refuses_work(backend: SandboxBackend, workspace: Path) -> None:
    box = backend.start(SandboxSpec(task_id="expiry", workspace=workspace, lifetime=2))
    try:
        result = box.run("sleep 10", timeout=30)
        assert result.timed_out and result.duration < 5
        with pytest.raises(Exception, match="time limit"):
            box.run("true")
    finally:
        box.close()


def test_interrupt_kills_the_running_command_and_the_sandbox_stays_usable(sandbox: Sandbox) -> None:
    import threading

    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(sandbox.run("sleep 100; echo never", timeout=120)))
    started = time.monotonic()
    worker.start()
    time.sleep(0.5)
    sandbox.interrupt()
    worker.join(timeout=10)
    assert results and time.monotonic() - started < 10
    result = results[0]
    assert result.exit_code != 0 and "never" not in result.stdout  # type: ignore[attr-defined]
    assert sandbox.run("echo still here").stdout == "still here\n"
