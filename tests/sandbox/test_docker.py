"""The Docker backend: limits and isolation as configured, commands and files, cleanup."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from sandbox.base import SandboxFileError, SandboxSpec, SandboxUnavailableError
from sandbox.docker import DockerBackend, DockerConfig, DockerSandbox


@pytest.fixture
def sandbox(tmp_path: Path, docker_backend: DockerBackend) -> Iterator[DockerSandbox]:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "hello.txt").write_text("hello\n")
    box = docker_backend.start(SandboxSpec(task_id="sbx-test", workspace=tmp_path / "ws"))
    try:
        yield box
    finally:
        box.close()


def test_container_has_limits_no_network_no_caps_and_labels(sandbox: DockerSandbox) -> None:
    sandbox.container.reload()
    host = sandbox.container.attrs["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["Memory"] == 512 * 1024 * 1024 and host["MemorySwap"] == host["Memory"]
    assert host["PidsLimit"] == 256 and host["NanoCpus"] == 1_000_000_000
    assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
    assert [m["Destination"] for m in sandbox.container.attrs["Mounts"]] == ["/workspace"]
    assert sandbox.container.labels["dev.overnight.task"] == "sbx-test"
    assert sandbox.run("id -u").stdout.strip() != "0"


def test_no_network_inside(sandbox: DockerSandbox) -> None:
    probe = (
        "import socket\ntry:\n socket.create_connection(('1.1.1.1', 53), timeout=3)\n print('open')\n"
        "except OSError as e:\n print('blocked', e.errno)"
    )
    result = sandbox.run(f'python3 -c "{probe}"')
    assert result.stdout.startswith("blocked"), result


def test_run_reports_exit_code_output_cwd_env_stdin_and_timeout(sandbox: DockerSandbox) -> None:
    result = sandbox.run("pwd; echo $GREETING; cat; echo oops >&2; exit 7", env={"GREETING": "hi"}, stdin=b"in\n")
    assert (result.exit_code, result.stdout, result.stderr) == (7, "/workspace\nhi\nin\n", "oops\n")
    assert sandbox.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    slow = sandbox.run("sleep 20", timeout=1)
    assert slow.timed_out and slow.duration < 10
    assert sandbox.run("echo next").stdout == "next\n"
    assert sandbox.run("printf '\\xff\\xfe ok'").stdout == "\ufffd\ufffd ok"


def test_files_are_read_written_and_listed_inside_the_workspace(sandbox: DockerSandbox, tmp_path: Path) -> None:
    assert sandbox.read_file("hello.txt") == b"hello\n"
    sandbox.write_file("deep/new.bin", b"\x00\x01binary")
    assert (tmp_path / "ws" / "deep" / "new.bin").read_bytes() == b"\x00\x01binary"
    assert sorted(sandbox.list_dir(".")) == ["deep", "hello.txt"]
    with pytest.raises(SandboxFileError, match="No such file"):
        sandbox.read_file("missing.txt")


def test_close_removes_the_container(
    docker_backend: DockerBackend, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    box = docker_backend.start(SandboxSpec(task_id="sbx-close", workspace=tmp_path))
    box.close()
    box.close()
    assert docker_client.containers.list(all=True, filters={"label": "dev.overnight.task=sbx-close"}) == []


def test_missing_image_says_how_to_build_it(docker_client: docker.DockerClient, tmp_path: Path) -> None:
    backend = DockerBackend(DockerConfig(image="overnight-sandbox:does-not-exist"), client=docker_client)
    with pytest.raises(SandboxUnavailableError, match="run `overnight image build`"):
        backend.start(SandboxSpec(task_id="x", workspace=tmp_path))
