"""The sandbox base image: what it carries, and `overnight image build` being a no-op when it exists."""

from __future__ import annotations

import subprocess

import docker

from sandbox.image import image_packages
from tests.conftest import SANDBOX_IMAGE


def test_image_carries_the_toolchain_the_agent_needs(docker_client: docker.DockerClient) -> None:
    assert {"git", "python3", "ripgrep", "patch", "ca-certificates"} <= set(image_packages())
    output = docker_client.containers.run(
        SANDBOX_IMAGE,
        [
            "bash",
            "-c",
            "git --version && python3 --version && rg --version | head -1 && patch --version | head -1"
            " && test -s /etc/ssl/certs/ca-certificates.crt && id sandbox",
        ],
        network_mode="none",
        remove=True,
    ).decode()
    assert "git version" in output and "Python 3" in output and "ripgrep" in output and "GNU patch" in output
    assert "uid=1000(sandbox)" in output


def test_image_build_does_nothing_when_the_image_is_present(docker_client: docker.DockerClient) -> None:
    result = subprocess.run(
        ["overnight", "image", "build", "--name", SANDBOX_IMAGE], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "is present; nothing to do" in result.stderr
