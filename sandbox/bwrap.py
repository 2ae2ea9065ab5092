"""The bubblewrap backend, for Linux hosts without Docker: the same exec server and interface.

The sandbox's root is the base image's root filesystem, bound read-only (``overnight image build`` keeps
it beside the Docker image); network, pid, ipc, uts and user namespaces are unshared (the network is
shared only for a set-up phase that asks for it); the workspace and the exec server's control folder are
the only writable binds, with size-limited tmpfs for /tmp and the home directory. bwrap runs as the
sandbox user inside a user namespace (mapped to the worker's own uid outside, so the workspace needs no
chown), with no-new-privileges and no capabilities; memory, pids and CPU are limited with a cgroup per
sandbox.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from sandbox.base import Sandbox, SandboxError, SandboxLimits, SandboxSpec, SandboxUnavailableError
from sandbox.cgroups import CGroup, _bytes
from sandbox.image import SANDBOX_HOME, SANDBOX_UID
from sandbox.reaper import disown, owned_tempdir, remove_owned
from sandbox.runtime import (
    CA_PATH,
    CONTROL_DIR,
    EXECSERVER,
    HOME_SEED,
    WORKDIR,
    SocketRuntime,
    disk_paths_option,
    sandbox_environment,
)

ENV_OPT = "/opt/overnight"


class BwrapConfig(SandboxLimits):
    """Settings of the bubblewrap backend."""

    rootfs: Path
    """Root filesystem of the base image (``overnight image build`` writes it)."""
    environments: Path = Path("/var/tmp/overnight-environments")
    """Where set-up environments (their /opt/overnight) are kept."""

    def build(self) -> BwrapBackend:
        return BwrapBackend(self)


class BwrapSandbox(SocketRuntime):
    process: subprocess.Popen[bytes]
    environment: Path | None = None
    """The environment folder a set-up sandbox writes its /opt/overnight into."""
    cgroup: CGroup


class BwrapBackend:
    name = "bwrap"

    def __init__(self, config: BwrapConfig) -> None:
        self.config = config

    def start(self, spec: SandboxSpec) -> BwrapSandbox:
        if shutil.which("bwrap") is None:
            raise SandboxUnavailableError("bubblewrap is not installed (apt-get install bubblewrap)")
        if not (self.config.rootfs / "usr" / "bin" / "python3").exists():
            raise SandboxUnavailableError(
                f"no sandbox root filesystem at {self.config.rootfs}: run `overnight image build`"
            )
        # Inside: the image's sandbox user (uid 1000); outside, the user namespace maps it to whoever runs the
        # worker, so the workspace stays the worker's own and no chown is needed.
        uid, gid = SANDBOX_UID, SANDBOX_UID
        environment: Path | None = None
        if spec.purpose == "setup":
            self.config.environments.mkdir(parents=True, exist_ok=True)
            environment = owned_tempdir("staging-", self.config.environments)
            (environment / "opt").mkdir()
            spec = spec.model_copy(update={"image": str(environment)})
        if self.config.control_root is not None:
            self.config.control_root.mkdir(parents=True, exist_ok=True)
        control = owned_tempdir("overnight-ctl-", self.config.control_root)
        shutil.copy(EXECSERVER, control / "execserver.py")
        group = CGroup(
            f"{spec.task_id}-{os.urandom(3).hex()}",
            memory=self.config.memory,
            pids=self.config.pids,
            cpus=self.config.cpus,
        )
        argv = self._argv(spec, control, uid, gid)

        def enter() -> None:  # in the child, before exec: nothing it forks escapes the limits
            group.join()

        try:
            process = subprocess.Popen(
                argv,
                preexec_fn=enter,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            group.remove()
            remove_owned(control)
            if environment is not None:
                remove_owned(environment)
            raise SandboxUnavailableError(f"could not start bubblewrap: {exc}") from exc

        def stop() -> None:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if process.stderr is not None:
                process.stderr.close()
            group.remove()
            remove_owned(control)
            if sandbox.environment is not None:  # a set-up that was never snapshotted
                remove_owned(sandbox.environment)

        sandbox = BwrapSandbox(control / "exec.sock", default_timeout=self.config.command_timeout, on_close=stop)
        sandbox.process = process
        sandbox.environment = environment
        sandbox.cgroup = group
        try:
            sandbox.wait_ready(self.config.startup_timeout, alive=lambda: process.poll() is None)
        except SandboxUnavailableError as exc:
            exited = process.poll() is not None and process.stderr is not None
            error = process.stderr.read().decode(errors="replace").strip() if exited else ""  # type: ignore[union-attr]
            sandbox.close()
            raise SandboxUnavailableError(f"{exc}{': ' + error if error else ''}") from exc
        return sandbox

    def snapshot(self, sandbox: Sandbox, key: str) -> tuple[str, int]:
        """Keep the set-up sandbox's environment folder as environment ``key``."""
        if not isinstance(sandbox, BwrapSandbox) or sandbox.environment is None:
            raise SandboxError("only a bubblewrap set-up sandbox can be snapshotted")
        final = self.config.environments / key
        shutil.rmtree(final, ignore_errors=True)
        sandbox.environment.rename(final)
        disown(sandbox.environment)
        sandbox.environment = None
        size = sum(path.lstat().st_blocks * 512 for path in final.rglob("*"))
        return str(final), size

    def remove_environment(self, ref: str) -> None:
        path = Path(ref)
        if path.parent == self.config.environments:
            shutil.rmtree(path, ignore_errors=True)

    def _argv(self, spec: SandboxSpec, control: Path, uid: int, gid: int) -> list[str]:
        config = self.config
        argv = [
            "bwrap", "--die-with-parent", "--new-session", "--unshare-all", "--uid", str(uid), "--gid", str(gid),
            "--hostname", "overnight", "--ro-bind", str(config.rootfs), "/",
            "--proc", "/proc", "--dev", "/dev",
            "--size", str(_bytes(config.tmp_size)), "--perms", "1777", "--tmpfs", "/tmp",
            "--size", str(_bytes(config.home_size)), "--perms", "0700", "--tmpfs", SANDBOX_HOME,
            "--bind", str(spec.workspace), WORKDIR, "--bind", str(control), CONTROL_DIR,
        ]  # fmt: skip
        if spec.network:
            argv += ["--share-net", "--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]
        if spec.ca_bundle is not None:
            argv += ["--ro-bind", str(spec.ca_bundle.resolve()), CA_PATH]
        if spec.image:  # an environment: its /opt/overnight, writable while it is being set up
            environment = Path(spec.image)
            argv += ["--bind" if spec.purpose == "setup" else "--ro-bind", str(environment / "opt"), ENV_OPT]
        server = (
            f"python3 {CONTROL_DIR}/execserver.py --socket {CONTROL_DIR}/exec.sock --workdir {WORKDIR}"
            f" --disk-limit {config.disk_limit}{disk_paths_option(spec.purpose, SANDBOX_HOME)}"
            f" --lifetime {spec.lifetime or 0:g}"
        )
        seed = f'[ -d {HOME_SEED} ] && cp -a {HOME_SEED}/. "$HOME"/ 2>/dev/null; '
        for name, value in sandbox_environment(spec).items():
            argv += ["--setenv", name, value]
        argv += ["--chdir", WORKDIR, "--", "sh", "-c", f"{seed}exec {server}"]
        return argv
