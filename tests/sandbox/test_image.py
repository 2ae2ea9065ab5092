"""The sandbox base image: what it carries, `overnight image build` being a no-op when it exists, and
`--check` proving every toolchain in a real sandbox."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import docker
import pytest

from sandbox.image import image_packages
from tests.conftest import SANDBOX_IMAGE

DOCKERFILE = Path(__file__).parents[2] / "infra" / "sandbox" / "Dockerfile"


def test_image_carries_the_toolchains(docker_client: docker.DockerClient) -> None:
    assert {"git", "python3", "ripgrep", "patch", "ca-certificates", "build-essential", "nodejs", "npm"} <= set(
        image_packages()
    )
    output = docker_client.containers.run(
        SANDBOX_IMAGE,
        ["bash", "-c", "git --version && python3 --version && rg --version | head -1 && patch --version | head -1"
         " && cc --version | head -1 && node --version && test -s /etc/ssl/certs/ca-certificates.crt && id sandbox"
         " && stat -c %u /opt/overnight"],
        network_mode="none", remove=True,
    ).decode()  # fmt: skip
    for expected in ("git version", "Python 3", "ripgrep", "GNU patch", "cc (Debian", "v18", "uid=1000(sandbox)"):
        assert expected in output
    assert output.strip().endswith("1000")


def test_the_dockerfile_installs_the_same_package_list() -> None:
    text = DOCKERFILE.read_text()
    assert "COPY sandbox/packages.txt" in text and "useradd --create-home --uid 1000" in text


def test_image_build_does_nothing_when_present_and_check_runs_every_toolchain(
    docker_client: docker.DockerClient, sandbox_rootfs: Path
) -> None:
    result = subprocess.run(
        ["overnight", "image", "build", "--name", SANDBOX_IMAGE, "--check"], capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "are present; nothing to do" in result.stderr
    assert "6/6 toolchains work" in result.stderr
    assert "v18" in result.stderr and "pytest" in result.stderr


def test_the_image_can_be_built_from_a_dockerfile_where_a_registry_is_reachable(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    # No registry here: the Dockerfile starts from the offline-built image instead of debian:bookworm-slim.
    from sandbox.base import SandboxUnavailableError
    from sandbox.image import build_from_dockerfile

    (tmp_path / "infra").mkdir()
    dockerfile = tmp_path / "infra" / "Dockerfile"
    dockerfile.write_text(f"FROM {SANDBOX_IMAGE}\nCOPY marker.txt /etc/overnight-marker\n")
    (tmp_path / "marker.txt").write_text("from a Dockerfile\n")
    name = f"overnight-sandbox:test-{secrets.token_hex(4)}"
    try:
        build_from_dockerfile(docker_client, name, dockerfile, tmp_path, log=lambda _: None)
        output = docker_client.containers.run(name, ["cat", "/etc/overnight-marker"], remove=True)
        assert output == b"from a Dockerfile\n"
        dockerfile.write_text(f"FROM {SANDBOX_IMAGE}\nRUN echo doomed && exit 3\n")
        with pytest.raises(SandboxUnavailableError, match="docker build failed"):
            build_from_dockerfile(docker_client, name + "x", dockerfile, tmp_path, log=lambda _: None)
        with pytest.raises(SandboxUnavailableError, match="not inside the build context"):
            build_from_dockerfile(docker_client, name, dockerfile, tmp_path / "infra" / "elsewhere")
    finally:
        docker_client.images.remove(name, force=True)
