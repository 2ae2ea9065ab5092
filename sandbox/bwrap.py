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
from sandbox.bwrap_stage import Stage
from sandbox.cgroups import CGroup, _bytes, owned_name
from sandbox.disk import check_workspace, keep_environment, make_limited_folder, remove_folder
from sandbox.egress import EgressPolicy
from sandbox.image import SANDBOX_HOME, SERVER_UID
from sandbox.reaper import owned_tempdir, process_identity, remove_owned
from sandbox.runtime import (
    CA_PATH,
    CONTROL_DIR,
    EGRESS_DIR,
    HOME_SEED,
    WORKDIR,
    SocketRuntime,
    control_folder,
    disk_paths_option,
    egress_option,
    sandbox_environment,
    sandbox_ids,
)
from sandbox.slirp import SlirpNetwork

ENV_OPT = "/opt/overnight"


class BwrapConfig(SandboxLimits):
    """Settings of the bubblewrap backend."""

    rootfs: Path
    """Root filesystem of the base image (``overnight image build`` writes it)."""
    environments: Path = Path("/var/tmp/overnight-environments")
    """Where set-up environments (their /opt/overnight) are kept."""
    setup_egress: EgressPolicy = EgressPolicy()
    """What a sandbox with a network may reach (``sandbox.egress``)."""

    def build(self) -> BwrapBackend:
        return BwrapBackend(self)


class BwrapSandbox(SocketRuntime):
    process: subprocess.Popen[bytes]
    environment: Path | None = None
    """The environment folder a set-up sandbox writes its /opt/overnight into."""
    cgroup: CGroup
    network: SlirpNetwork | None = None


class BwrapBackend:
    name = "bwrap"

    def __init__(self, config: BwrapConfig) -> None:
        self.config = config

    def start(self, spec: SandboxSpec) -> BwrapSandbox:
        self._check_host()
        check_workspace(spec.workspace, self.config)
        # Two uids, the same inside and outside: the exec server's (SERVER_UID) and the commands'
        # (SANDBOX_UID), neither of them root; the worker writes that user-namespace map itself.
        uid, gid = sandbox_ids(spec.workspace)
        network = SlirpNetwork(self.config.setup_egress) if spec.network else None
        environment = self._staging(uid, gid) if spec.purpose == "setup" else None
        if environment is not None:
            spec = spec.model_copy(update={"image": str(environment)})
        control = control_folder(self.config.control_root)
        if network is not None:
            network.resolv_conf(control)
        group = CGroup(
            owned_name(f"{spec.task_id}-{os.urandom(3).hex()}", process_identity()),
            memory=self.config.memory,
            pids=self.config.pids,
            cpus=self.config.cpus,
        )
        stage = Stage(self.config.rootfs, spec, control)
        argv = self._argv(spec, stage, uid)

        def enter() -> None:  # in the child, before exec: nothing it forks escapes the limits
            group.join()
            stage.enter(SERVER_UID)

        try:
            process = stage.start(argv, enter, uid_map=((SERVER_UID, SERVER_UID), (uid, uid)))
        except OSError as exc:
            group.remove()
            remove_owned(control)
            if environment is not None:
                remove_owned(environment)
            raise SandboxUnavailableError(f"could not start bubblewrap: {exc}") from exc
        return self._connect(process, group, control, environment, network)

    def _check_host(self) -> None:
        if shutil.which("bwrap") is None:
            raise SandboxUnavailableError("bubblewrap is not installed (apt-get install bubblewrap)")
        if not (self.config.rootfs / "usr" / "bin" / "python3").exists():
            raise SandboxUnavailableError(
                f"no sandbox root filesystem at {self.config.rootfs}: run `overnight image build`"
            )

    def _staging(self, uid: int, gid: int) -> Path:
        """A set-up's environment folder; its /opt/overnight: a disk of its own, as large as the disk limit."""
        self.config.environments.mkdir(parents=True, exist_ok=True)
        environment = owned_tempdir("staging-", self.config.environments)
        try:
            make_limited_folder(environment / "opt", self.config, owner=(uid, gid))
        except BaseException:
            remove_owned(environment)
            raise
        return environment

    def _connect(
        self,
        process: subprocess.Popen[bytes],
        group: CGroup,
        control: Path,
        environment: Path | None,
        network: SlirpNetwork | None,
    ) -> BwrapSandbox:
        """The sandbox for a started bubblewrap, once its relay (if any) is attached and its exec server
        answers; closing it kills the process group and removes the cgroup, the control folder, a set-up's
        environment that was never snapshotted, and the relay."""

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
            if network is not None:
                network.close()

        sandbox = BwrapSandbox(control / "exec.sock", default_timeout=self.config.command_timeout, on_close=stop)
        sandbox.process = process
        sandbox.environment = environment
        sandbox.cgroup = group
        sandbox.network = network
        try:
            if network is not None:
                network.attach(process.pid, self.config.startup_timeout)
            sandbox.wait_ready(self.config.startup_timeout, alive=lambda: process.poll() is None)
        except SandboxUnavailableError as exc:
            exited = process.poll() is not None and process.stderr is not None
            error = process.stderr.read().decode(errors="replace").strip() if exited else ""  # type: ignore[union-attr]
            sandbox.close()
            raise SandboxUnavailableError(f"{exc}{': ' + error if error else ''}") from exc
        return sandbox

    def create_workspace(self, path: Path) -> None:
        make_limited_folder(path, self.config)

    def snapshot(self, sandbox: Sandbox, key: str) -> tuple[str, int]:
        """Keep a copy of the set-up sandbox's environment folder as environment ``key``."""
        if not isinstance(sandbox, BwrapSandbox) or sandbox.environment is None:
            raise SandboxError("only a bubblewrap set-up sandbox can be snapshotted")
        size = keep_environment(sandbox.environment, self.config.environments / key)
        remove_owned(sandbox.environment)
        sandbox.environment = None
        return str(self.config.environments / key), size

    def remove_environment(self, ref: str) -> None:
        path = Path(ref)
        if path.parent == self.config.environments:
            remove_folder(path)

    def _argv(self, spec: SandboxSpec, stage: Stage, uid: int) -> list[str]:
        config = self.config
        argv = [
            "bwrap", "--die-with-parent", "--new-session", "--unshare-all", "--unshare-user",
            "--uid", str(SERVER_UID), "--gid", str(SERVER_UID), "--clearenv",
            "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_KILL",
            "--hostname", "overnight", "--ro-bind", str(stage.rootfs), "/",
            "--proc", "/proc", "--dev", "/dev",
            "--size", str(_bytes(config.tmp_size)), "--perms", "1777", "--tmpfs", "/tmp",
            "--size", str(_bytes(config.home_size)), "--perms", "1777", "--tmpfs", "/home",
            "--bind", str(stage.workspace), WORKDIR, "--bind", str(stage.control), CONTROL_DIR,
        ]  # fmt: skip
        if spec.network:  # its own namespace (never the host's), given a slirp4netns relay once started
            argv += ["--ro-bind", str(stage.control / "resolv.conf"), "/etc/resolv.conf"]
        if stage.ca_bundle is not None:
            argv += ["--ro-bind", str(stage.ca_bundle), CA_PATH]
        if stage.egress is not None:  # the egress proxy's socket: the only way out
            argv += ["--bind", str(stage.egress), EGRESS_DIR]
        if stage.environment is not None:  # an environment: its /opt/overnight, writable while it is being set up
            argv += ["--bind" if spec.purpose == "setup" else "--ro-bind", str(stage.environment), ENV_OPT]
        seed = f" --seed-home {HOME_SEED}" if spec.purpose != "setup" else ""
        server = (
            f"exec python3 {CONTROL_DIR}/execserver.py --socket {CONTROL_DIR}/exec.sock --workdir {WORKDIR}"
            f" --disk-limit {config.disk_limit}{disk_paths_option(spec.purpose, config)}"
            f" --lifetime {spec.lifetime or 0:g} --command-uid {uid} --command-gid {uid}"
            f" --seccomp {CONTROL_DIR}/seccomp.bpf --home {SANDBOX_HOME}{seed}{egress_option(spec)}"
        )
        for name, value in sandbox_environment(spec).items():
            argv += ["--setenv", name, value]
        # "/": the server itself may not enter the workspace; its threads act as the commands there.
        argv += ["--chdir", "/", "--", "sh", "-c", server]
        return argv
