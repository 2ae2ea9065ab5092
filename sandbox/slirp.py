"""bubblewrap's sandbox network: a network namespace of its own, given outbound access by a slirp4netns relay.

bwrap unshares the network (it never shares the host's); once it started, slirp4netns attaches a tap device
to that namespace and makes the sandbox's connections from the host on its behalf, with the host's loopback
switched off (``--disable-host-loopback``), in a sandbox and seccomp filter of its own, and under the relay
group, whose traffic the ``OVERNIGHT-SETUP`` chain filters (``sandbox.egress``): no host address, private,
link-local or loopback destination. It exits when the worker closes its exit pipe (also when the worker
dies).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
from pathlib import Path

from sandbox.base import SandboxUnavailableError
from sandbox.egress import EgressPolicy, install, relay_gid, relay_jumps, require_root

RESOLV_CONF = b"nameserver 10.0.2.3\n"
"""slirp4netns' own DNS address inside the namespace; it forwards to the host's nameservers."""


class SlirpNetwork:
    """One sandbox's network: checked (and its firewall installed) before bwrap starts, attached after."""

    def __init__(self, policy: EgressPolicy) -> None:
        if shutil.which("slirp4netns") is None:
            raise SandboxUnavailableError(
                "bubblewrap's set-up network needs slirp4netns (apt-get install slirp4netns), "
                "or set OVERNIGHT_SANDBOX_SETUP_NETWORK=false"
            )
        require_root()  # the relay runs under its group, and that group's traffic is filtered
        self.gid = relay_gid()
        if policy.install:
            install(policy, relay_jumps(self.gid))
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in _stop) not a pipe: a relay that logs a lot must never block on it
        self._exit: int | None = None

    @staticmethod
    def resolv_conf(folder: Path) -> Path:
        """A resolv.conf naming the relay's DNS, for bwrap to bind at /etc/resolv.conf."""
        path = folder / "resolv.conf"
        path.write_bytes(RESOLV_CONF)
        path.chmod(0o644)
        return path

    def attach(self, bwrap_pid: int, timeout: float) -> None:
        """After bwrap started: give its sandbox's network namespace a relay and wait until the relay is up."""
        pid = _sandbox_pid(bwrap_pid)
        ready, ready_child = os.pipe()
        exit_child, self._exit = os.pipe()
        try:
            self.process = subprocess.Popen(
                ["slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback", "--enable-sandbox",
                 "--enable-seccomp", f"--ready-fd={ready_child}", f"--exit-fd={exit_child}", str(pid), "tap0"],
                pass_fds=(ready_child, exit_child), group=self.gid, extra_groups=[], start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
            )  # fmt: skip
        except OSError as exc:
            raise SandboxUnavailableError(f"could not start slirp4netns: {exc}") from exc
        finally:
            os.close(ready_child)
            os.close(exit_child)
        try:
            up = bool(select.select([ready], [], [], timeout)[0]) and os.read(ready, 1) == b"1"
        finally:
            os.close(ready)
        if not up:
            error = self._stop()
            raise SandboxUnavailableError(f"slirp4netns did not come up: {error[-300:]}")

    def close(self) -> None:
        """Stop the relay (closing its exit pipe); safe to call twice."""
        self._stop()

    def _stop(self) -> str:
        if self._exit is not None:
            os.close(self._exit)
            self._exit = None
        if self.process is not None:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log.closed:
            return ""
        self._log.seek(max(0, self._log.seek(0, os.SEEK_END) - 4096))
        error = self._log.read()
        self._log.close()
        return error.decode(errors="replace").strip()


def _sandbox_pid(bwrap_pid: int) -> int:
    """bwrap's child: the process that holds the sandbox's namespaces (found by its parent pid)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == bwrap_pid:
            return int(entry.name)
    raise SandboxUnavailableError("bubblewrap's sandbox process is gone before its network was attached")
