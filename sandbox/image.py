"""Build the sandbox base image offline: debootstrap a Debian root filesystem and ``docker import`` it.

``infra/sandbox/Dockerfile`` builds the same image where a registry can be reached; both take their
package list from ``sandbox/packages.txt``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import docker
import docker.errors

from sandbox.base import SandboxUnavailableError

SUITE = "bookworm"
SANDBOX_UID = 1000
IMAGE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    "ENV HOME=/home/sandbox",
    "ENV PYTHONDONTWRITEBYTECODE=1",
    "WORKDIR /workspace",
    'CMD ["sleep", "infinity"]',
)


def image_packages() -> list[str]:
    text = files("sandbox").joinpath("packages.txt").read_text()
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def image_present(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def build_base_image(
    client: docker.DockerClient,
    name: str,
    *,
    mirror: str = "http://deb.debian.org/debian",
    log: Callable[[str], None] = print,
) -> None:
    """Create image ``name`` from a fresh debootstrap of Debian ``SUITE`` (needs root and debootstrap)."""
    if shutil.which("debootstrap") is None:
        raise SandboxUnavailableError("debootstrap is not installed (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="overnight-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        packages = ",".join(image_packages())
        log(f"debootstrap {SUITE} ({packages}) from {mirror}")
        _run(["debootstrap", "--variant=minbase", f"--include={packages}", SUITE, str(rootfs), mirror])
        _finish_rootfs(rootfs)
        log(f"importing {rootfs} as {name}")
        repository, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "latest")
        with subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE) as tar:
            assert tar.stdout is not None
            client.api.import_image_from_stream(
                tar.stdout, repository=repository, tag=tag or "latest", changes=list(IMAGE_CHANGES)
            )
        if tar.returncode != 0:
            raise SandboxUnavailableError(f"tar of the root filesystem failed with exit code {tar.returncode}")


def _finish_rootfs(rootfs: Path) -> None:
    """Add the unprivileged sandbox user and the workspace mount point; drop caches the image needn't carry."""
    _run(
        [
            "chroot",
            str(rootfs),
            "useradd",
            "--create-home",
            "--uid",
            str(SANDBOX_UID),
            "--shell",
            "/bin/bash",
            "sandbox",
        ]
    )
    (rootfs / "workspace").mkdir(exist_ok=True)
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (rootfs / cache).glob("*"):
            if entry.is_file():
                entry.unlink()


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise SandboxUnavailableError(f"{argv[0]} failed ({result.returncode}): " + " | ".join(tail))
