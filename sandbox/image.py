"""The sandbox base image, built offline: debootstrap a Debian root filesystem, install the toolchain with
apt inside it, keep it (the bubblewrap backend runs on it) and ``docker import`` it (the Docker backend).

``infra/sandbox/Dockerfile`` builds the same image where a registry can be reached; both install
``sandbox/packages.txt``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import docker
import docker.errors

from sandbox.base import SandboxUnavailableError

SUITE = "bookworm"
DEFAULT_IMAGE = "overnight-sandbox:bookworm-2"
SANDBOX_UID = 1000
"""The uid commands run as, inside and (under a root worker) outside the sandbox."""
SERVER_UID = 999
"""The uid of the exec server, inside and outside: one the commands don't have, so they cannot signal, trace
or replace it, nor write the folder its socket is in."""
SANDBOX_HOME = "/home/sandbox"
COMPLETE_MARKER = ".overnight-rootfs-complete"
IMAGE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    f"ENV HOME={SANDBOX_HOME}",
    "ENV PYTHONDONTWRITEBYTECODE=1",
    "WORKDIR /workspace",
    'CMD ["sleep", "infinity"]',
)
# One command per toolchain for `overnight image build --check`.
SMOKE_COMMANDS = {
    "git": "git --version",
    "python": "python3 --version && python3 -m pip --version | cut -d' ' -f1-2 && python3 -m pytest --version",
    "venv": "python3 -m venv /tmp/smoke-venv && /tmp/smoke-venv/bin/python -c 'import sys; print(sys.prefix)'",
    "node": "node --version && npm --version",
    "c": "cc --version | head -1 && make --version | head -1",
    "tools": "rg --version | head -1 && jq --version && curl --version | head -1 && patch --version | head -1",
}

Log = Callable[[str], None]


def image_packages() -> list[str]:
    text = files("sandbox").joinpath("packages.txt").read_text()
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def rootfs_path(data_dir: Path, image: str) -> Path:
    return data_dir / "rootfs" / image.replace("/", "_").replace(":", "_")


def rootfs_complete(rootfs: Path) -> bool:
    return (rootfs / COMPLETE_MARKER).exists()


def image_present(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def build_rootfs(rootfs: Path, *, mirror: str = "http://deb.debian.org/debian", log: Log = print) -> None:
    """Debootstrap Debian ``SUITE`` into ``rootfs`` and apt-get the toolchain into it (needs root)."""
    if shutil.which("debootstrap") is None:
        raise SandboxUnavailableError("debootstrap is not installed (apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise SandboxUnavailableError("building the root filesystem needs root (debootstrap and chroot)")
    staging = rootfs.with_name(rootfs.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    log(f"debootstrap {SUITE} from {mirror}")
    _run(["debootstrap", "--variant=minbase", SUITE, str(staging), mirror])
    shutil.copy("/etc/resolv.conf", staging / "etc" / "resolv.conf")
    packages = image_packages()
    log(f"apt-get install {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["chroot", str(staging), "apt-get", "update", "-qq"], env=env)
    _run(["chroot", str(staging), "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], env=env)
    _finish_rootfs(staging)
    shutil.rmtree(rootfs, ignore_errors=True)
    staging.rename(rootfs)


def _finish_rootfs(rootfs: Path) -> None:
    """The unprivileged sandbox user, the mount points, no apt caches; then mark the tree complete."""
    _run(["chroot", str(rootfs), "useradd", "--create-home", "--uid", str(SANDBOX_UID), "--shell", "/bin/bash",
          "sandbox"])  # fmt: skip
    for folder in ("workspace", "overnight"):
        (rootfs / folder).mkdir(exist_ok=True)
    opt = rootfs / "opt" / "overnight"
    opt.mkdir(parents=True, exist_ok=True)
    os.chown(opt, SANDBOX_UID, SANDBOX_UID)  # set-up phases install environments (venvs) here
    _run(["chroot", str(rootfs), "apt-get", "clean"])
    shutil.rmtree(rootfs / "var" / "lib" / "apt" / "lists", ignore_errors=True)
    (rootfs / "var" / "lib" / "apt" / "lists" / "partial").mkdir(parents=True)
    (rootfs / COMPLETE_MARKER).write_text("")


def import_image(client: docker.DockerClient, rootfs: Path, name: str, *, log: Log = print) -> None:
    log(f"importing {rootfs} as {name}")
    repository, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "latest")
    with subprocess.Popen(
        ["tar", "-C", str(rootfs), "--numeric-owner", f"--exclude=./{COMPLETE_MARKER}", "-c", "."],
        stdout=subprocess.PIPE,
    ) as tar:
        assert tar.stdout is not None
        client.api.import_image_from_stream(tar.stdout, repository=repository, tag=tag or "latest",
                                            changes=list(IMAGE_CHANGES))  # fmt: skip
    if tar.returncode != 0:
        raise SandboxUnavailableError(f"tar of the root filesystem failed with exit code {tar.returncode}")


def build_from_dockerfile(
    client: docker.DockerClient, name: str, dockerfile: Path, context: Path, *, log: Log = print
) -> None:
    """``docker build`` of ``dockerfile`` (a path inside ``context``) as ``name``, for hosts that can pull the
    base image from a registry (where debootstrap cannot run: an unprivileged container, say)."""
    try:
        relative = dockerfile.resolve().relative_to(context.resolve())
    except ValueError as exc:
        raise SandboxUnavailableError(f"{dockerfile} is not inside the build context {context}") from exc
    log(f"building {name} from {dockerfile} (context {context})")
    try:
        client.images.build(path=str(context), dockerfile=str(relative), tag=name, rm=True, forcerm=True)
    except docker.errors.BuildError as exc:
        last = [str(entry.get("stream") or entry.get("error") or "").strip() for entry in exc.build_log][-3:]
        raise SandboxUnavailableError(f"docker build failed: {exc.msg} | {' | '.join(x for x in last if x)}") from exc
    except docker.errors.APIError as exc:
        raise SandboxUnavailableError(f"docker build failed: {exc.explanation or exc}") from exc


def export_rootfs(client: docker.DockerClient, name: str, rootfs: Path, *, log: Log = print) -> None:
    """Unpack image ``name`` into ``rootfs`` (for the bubblewrap backend on a host that has the image)."""
    log(f"exporting {name} to {rootfs}")
    staging = rootfs.with_name(rootfs.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    container = client.containers.create(name, command=["true"])
    try:
        with subprocess.Popen(["tar", "-C", str(staging), "--numeric-owner", "-x"], stdin=subprocess.PIPE) as tar:
            assert tar.stdin is not None
            for chunk in container.export():
                tar.stdin.write(chunk)
            tar.stdin.close()
        if tar.returncode != 0:
            raise SandboxUnavailableError(f"unpacking {name} failed with exit code {tar.returncode}")
    finally:
        container.remove(force=True)
    (staging / COMPLETE_MARKER).write_text("")
    shutil.rmtree(rootfs, ignore_errors=True)
    staging.rename(rootfs)


def ensure_image(
    name: str, rootfs: Path, *, client: docker.DockerClient | None, force: bool = False, log: Log = print
) -> list[str]:
    """Make sure the root filesystem (and, with Docker, the image) exist; return what was done."""
    done = []
    have_image = client is not None and image_present(client, name) and not force
    if force or not rootfs_complete(rootfs):
        if have_image and client is not None:
            export_rootfs(client, name, rootfs, log=log)
            done.append("exported the root filesystem from the image")
        else:
            build_rootfs(rootfs, log=log)
            done.append("built the root filesystem")
    if client is not None and not have_image:
        import_image(client, rootfs, name, log=log)
        done.append("imported the image")
    return done


def _run(argv: list[str], env: dict[str, str] | None = None) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise SandboxUnavailableError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} failed ({result.returncode}): "
                                      + " | ".join(tail))  # fmt: skip
