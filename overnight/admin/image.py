"""``overnight image build``: the sandbox base image and its root filesystem, built offline, with a smoke check."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from overnight.settings import Settings

Say = Callable[[str], None]


def build_image(
    *, name: str | None, force: bool, check: bool, say: Say, dockerfile: tuple[Path, Path] | None = None
) -> int:
    import docker
    import docker.errors

    from sandbox.base import SandboxUnavailableError
    from sandbox.image import SMOKE_COMMANDS, build_from_dockerfile, ensure_image, image_present

    settings = Settings()
    image = name or settings.sandbox.image
    rootfs = settings.sandbox_rootfs_for(image)
    client: docker.DockerClient | None
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        say(f"no Docker engine ({exc.__class__.__name__}): building the root filesystem for bubblewrap only")
        client = None
    started = time.monotonic()
    try:
        if dockerfile is not None:
            if client is None:
                say("[red]--dockerfile needs a Docker engine[/red]")
                return 1
            if force or not image_present(client, image):
                build_from_dockerfile(client, image, dockerfile[0], dockerfile[1], log=say)
                shutil.rmtree(rootfs, ignore_errors=True)  # exported afresh from the new image below
        done = ensure_image(image, rootfs, client=client, force=force and dockerfile is None, log=say)
    except SandboxUnavailableError as exc:
        say(f"[red]image build failed: {exc}[/red]")
        return 1
    if done:
        say(f"{image}: {', '.join(done)} in {time.monotonic() - started:.0f} s (root filesystem: {rootfs})")
    else:
        say(f"image {image} and its root filesystem {rootfs} are present; nothing to do")
    if check:
        return _check_image(image, rootfs, client, SMOKE_COMMANDS, say)
    return 0


def _check_image(image: str, rootfs: Path, client: Any, commands: dict[str, str], say: Say) -> int:
    """Run one smoke command per toolchain in a real sandbox and print what it reports."""
    import tempfile

    from sandbox.base import SandboxError, SandboxSpec
    from sandbox.disk import remove_folder
    from worker.sandboxes import sandbox_backend

    backend = sandbox_backend(Settings(), docker_available=client is not None)
    failures = 0
    with tempfile.TemporaryDirectory() as folder:
        workspace = Path(folder) / "workspace"
        backend.create_workspace(workspace)
        try:
            sandbox = backend.start(SandboxSpec(task_id="image-check", workspace=workspace, image=None))
        except BaseException:
            remove_folder(workspace)
            raise
        try:
            for toolchain, command in commands.items():
                try:
                    result = sandbox.run(command, timeout=60)
                except SandboxError as exc:
                    say(f"[red]FAIL[/red] {toolchain}: {exc}")
                    failures += 1
                    continue
                text = " | ".join(line for line in (result.stdout + result.stderr).splitlines() if line.strip())
                ok = result.exit_code == 0
                failures += not ok
                say(f"{'[green]ok[/green]  ' if ok else '[red]FAIL[/red]'} {toolchain}: {text}")
        finally:
            sandbox.close()
            remove_folder(workspace)
    say(f"{backend.name} sandbox from {image}: {len(commands) - failures}/{len(commands)} toolchains work")
    return 1 if failures else 0
