"""The egress proxy: an agent's (or a set-up's) only way out when its network policy is an allowlist or full.

The sandbox keeps no network interface but loopback (Docker ``none``, bubblewrap ``--unshare-net``), so a command
that ignores ``HTTP_PROXY`` reaches nothing. Its exec server relays 127.0.0.1:3128 (``sandbox.relay``) to a Unix socket
the worker listens on (``EgressLease.folder``, mounted at ``/overnight/egress``), and the worker relays that socket to
one squid of this worker process (Debian's ``squid``), connecting from an address of 127/8 that is this
sandbox's alone. squid parses HTTP and CONNECT, asks a small helper whether the sandbox's policy (found by that
source address) allows the host and the method, refuses every destination in a private, loopback, link-local
or reserved range whatever name led there (its own ``dst`` check of the address it is about to connect to:
DNS rebinding included), chains to ``ProxyConfig.upstream`` when the host itself needs a proxy, and writes one
line per refusal, which ``EgressLease.refusals`` reads back.

HTTPS is a CONNECT tunnel the proxy cannot look into (no interception): a host allowlist holds for it, but a
read-only policy cannot tell GET from POST inside it, so under ``read_only`` CONNECT is refused (docs/environments.md).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from datetime import UTC, datetime
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, Field

from sandbox.image import SERVER_UID
from sandbox.reaper import owned_tempdir, remove_owned
from sandbox.relay import SOCKET_NAME, Relay
from sandbox.squidconf import HELPER, REASONS, EgressError, die_with_parent, free_port, spawn, squid_config

SETTLE_SECONDS = 2.0
"""How long reading refusals waits for the sandbox's open connections to end (a download still running is left
to be read after the next command)."""
LOG_DELAY = 0.02
"""squid writes a refusal's line as it ends the transaction: a moment after the connection closed."""
MAX_PENDING = 1000
"""Refusals of one lease kept until they are read; more are counted into the last one."""


class ProxyPolicy(BaseModel):
    """What one sandbox may reach through the proxy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domains: tuple[str, ...] | None = None
    """Host names (``*.example.com``: every host under example.com); None: every public host (full)."""
    read_only: bool = False
    """Only GET, HEAD and OPTIONS (and so no CONNECT: HTTPS is refused)."""


class ProxyConfig(BaseModel):
    """The worker's egress proxy."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    squid: str = "squid"
    """The squid binary (Debian's ``squid``)."""
    upstream: str | None = None
    """A proxy the host itself reaches the internet through (OVERNIGHT_SANDBOX_PROXY): squid forwards to it."""
    allowed_networks: tuple[IPv4Network | IPv6Network, ...] = ()
    """Private ranges the proxy may connect to anyway (an internal registry); tests name a loopback address."""
    hosts_file: Path | None = None
    """Names the proxy looks up before DNS (default: /etc/hosts)."""
    user: str = "proxy"
    """The account squid runs as (Debian's package makes ``proxy``); never root."""
    state_root: Path = Field(default_factory=lambda: Path(tempfile.gettempdir()))
    """Where squid's folder (its configuration, helper and refusal log) is made; squid's user must reach it."""
    lease_root: Path | None = None
    """Where each sandbox's socket folder is made (the control folders' root: the Docker engine sees it)."""
    startup_timeout: float = Field(default=15, gt=0)
    log_rotate_bytes: int = Field(default=16 * 2**20, gt=0)
    """Size past which the refusal log is read, rotated and deleted."""


class Refusal(BaseModel):
    """One request the proxy refused (``count`` of them when several were alike)."""

    model_config = ConfigDict(frozen=True)

    host: str
    port: int
    method: str
    at: datetime
    reason: str
    count: int = 1


class EgressProxy:
    """This worker process's squid, started on first use, and the sandboxes' leases on it."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._folder: Path | None = None
        self._port = 0
        self._offset = self._old_offset = 0
        self._rotated = 0.0
        self._leases: dict[str, EgressLease] = {}

    def open(self, task_id: str, policy: ProxyPolicy) -> EgressLease:
        """A lease for one sandbox: its socket folder (``SandboxSpec.egress``) and its refusals."""
        with self._lock:
            self._start()
            assert self._folder is not None
            address = self._new_address()
            lease = EgressLease(self, address, policy, task_id)
            self._write_policy(lease)
            self._leases[address] = lease
            return lease

    def _write_policy(self, lease: EgressLease) -> None:
        """The policy file squid's helper reads for the lease's source address (root's; squid's user reads it)."""
        assert self._folder is not None
        lease.policy_file = self._folder / "policies" / lease.address
        lease.policy_file.write_text(lease.policy.model_dump_json())
        lease.policy_file.chmod(0o644)

    def _new_address(self) -> str:
        while True:
            address = str(ipaddress.IPv4Address(random.randrange(0x7F400000, 0x7F800000)))  # 127.64.0.0/10
            if address not in self._leases:
                return address

    def _start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        if shutil.which(self.config.squid) is None:
            raise EgressError("the egress proxy needs squid (apt-get install squid): infra/setup-host.sh installs it")
        try:  # a root worker runs squid as its own user; any other, as itself
            account = pwd.getpwnam(self.config.user) if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
        except KeyError as exc:
            raise EgressError(f"the egress proxy's user {self.config.user!r} does not exist") from exc
        for attempt in range(3):  # squid binds a port found free a moment before: another may have taken it
            try:
                self._launch(account)
                return
            except EgressError:
                if attempt == 2:
                    raise

    def _launch(self, account: pwd.struct_passwd) -> None:
        if self._folder is not None:
            remove_owned(self._folder)
        self._folder = folder = owned_tempdir("overnight-egress-", self.config.state_root)
        (folder / "policies").mkdir()
        (folder / "helper.py").write_text(HELPER)
        os.chmod(folder, 0o755)
        os.chown(folder, account.pw_uid, account.pw_gid)
        self._port = free_port()
        config = self.config
        (folder / "squid.conf").write_text(squid_config(folder, self._port, upstream=config.upstream,
                                                        allowed_networks=config.allowed_networks,
                                                        hosts_file=config.hosts_file))  # fmt: skip
        self._offset, self._rotated = 0, 0.0
        for lease in self._leases.values():  # squid died and is started again: the open leases go on
            self._write_policy(lease)
        self._process = spawn(
            [self.config.squid, "-N", "-f", str(folder / "squid.conf")], user=account.pw_uid, group=account.pw_gid,
            extra_groups=[] if os.geteuid() == 0 else None, preexec_fn=die_with_parent, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )  # fmt: skip
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self._process is not None and self._folder is not None
        deadline = time.monotonic() + self.config.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EgressError(f"squid exited at start: {self._cache_log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self._port), 0.5) as probe:
                if probe.getsockname() != probe.getpeername():  # not a TCP self-connect to a port nobody holds
                    return
            time.sleep(0.02)
        self.close()
        raise EgressError(f"squid did not start within {self.config.startup_timeout:g} s: {self._cache_log()}")

    def _cache_log(self) -> str:
        assert self._folder is not None
        try:
            lines = (self._folder / "cache.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(line for line in lines if "FATAL" in line or "ERROR" in line)[-500:] or "(nothing logged)"

    def connect(self, address: str) -> socket.socket:
        """A connection to squid from a lease's own source address; a squid that died is started again."""
        for attempt in range(2):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((address, 0))
                sock.connect(("127.0.0.1", self._port))
                return sock
            except ConnectionRefusedError:
                sock.close()
                if attempt:
                    raise
                with self._lock:
                    self._start()
            except OSError:
                sock.close()
                raise
        raise AssertionError("unreachable")

    def poll(self) -> None:
        """Read every refusal squid logged since the last poll (4 MiB at a time) and hand each to its lease. Past
        ``log_rotate_bytes`` the log is renamed and squid told to reopen it (SIGUSR1); once it has, the rest of the
        old one is read and it goes (else a second later): what squid keeps on the host stays about that size."""
        with self._lock:
            if self._folder is None:
                return
            log, old = self._folder / "refusals.log", self._folder / "refusals.old"
            if self._rotated and time.monotonic() - self._rotated > 1.0:
                self._read(old, self._old_offset)
                old.unlink(missing_ok=True)
                self._rotated = 0.0
            self._offset = self._read(log, self._offset)
            if not self._rotated and self._offset > self.config.log_rotate_bytes and self._process is not None:
                log.rename(old)
                self._old_offset, self._offset, self._rotated = self._offset, 0, time.monotonic()
                self._process.send_signal(signal.SIGUSR1)
                while not log.exists() and time.monotonic() - self._rotated < 1.0:
                    time.sleep(0.01)
                if log.exists():  # squid closed the old one and writes to the new one: the old is complete
                    self._read(old, self._old_offset)
                    old.unlink(missing_ok=True)
                    self._rotated = 0.0

    def _read(self, path: Path, offset: int) -> int:
        """Every complete line of ``path`` from ``offset`` on, dispatched; the offset after them."""
        try:
            with open(path, "rb") as log:
                log.seek(offset)
                while data := log.read(4 * 2**20):
                    complete = data[: data.rfind(b"\n") + 1]
                    for line in complete.decode(errors="replace").splitlines():
                        _dispatch(line, self._leases)
                    offset += len(complete)
                    log.seek(offset)
                    if not complete:
                        break
        except FileNotFoundError:
            pass
        return offset

    def release(self, lease: EgressLease) -> None:
        with self._lock:
            self._leases.pop(lease.address, None)
            lease.policy_file.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop squid (its helpers end with it) and remove its folder."""
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
            self._process = None
        if self._folder is not None:
            remove_owned(self._folder)
            self._folder = None


def _dispatch(line: str, leases: dict[str, EgressLease]) -> None:
    fields = line.split()
    if len(fields) < 6 or fields[1] not in leases:
        return
    stamp, address, method, host, port, reason = fields[:6]
    try:
        at = datetime.fromtimestamp(float(stamp), UTC)
        host = quote(unquote(host), safe="[]:*")[:255]  # the sandbox's bytes: one printable token, never a line break
        refusal = Refusal(host=host, port=int(port) if port.isdigit() else 0, method=method[:16],
                          at=at, reason=REASONS.get(reason, reason[:80]))  # fmt: skip
    except ValueError:
        return
    leases[address].add(refusal)


class EgressLease:
    """One sandbox's way out: the socket the worker listens on (in ``folder``) and the refusals of its requests."""

    def __init__(self, proxy: EgressProxy, address: str, policy: ProxyPolicy, task_id: str) -> None:
        self.proxy = proxy
        self.address = address
        self.policy = policy
        self.policy_file = Path("/nonexistent")
        """Where squid's helper reads the policy (written by the proxy, moved when squid is started again)."""
        self.pending: deque[Refusal] = deque()
        if proxy.config.lease_root is not None:
            proxy.config.lease_root.mkdir(parents=True, exist_ok=True)
        self.folder = owned_tempdir(f"egress-{task_id[:20]}-", proxy.config.lease_root)
        os.chmod(self.folder, 0o755)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.folder / SOCKET_NAME))
            os.chown(self.folder / SOCKET_NAME, SERVER_UID, SERVER_UID)  # the exec server's alone
            os.chmod(self.folder / SOCKET_NAME, 0o600)
            listener.listen(64)
        except OSError as exc:
            listener.close()
            remove_owned(self.folder)
            raise EgressError(f"could not make the sandbox's proxy socket: {exc}") from exc
        self.relay = Relay(listener, lambda: proxy.connect(address)).start()
        self._seen = 0

    def add(self, refusal: Refusal) -> None:
        if len(self.pending) < MAX_PENDING:
            self.pending.append(refusal)
        else:
            last = self.pending.pop()
            self.pending.append(last.model_copy(update={"count": last.count + refusal.count}))

    def refusals(self) -> list[Refusal]:
        """The refusals since the last call, alike ones (host, port, method, reason) counted into the first.

        squid logs a request once it is done with it: when the sandbox made connections since the last call, this
        waits (up to ``SETTLE_SECONDS``) until they are closed, and a moment more for the log line."""
        if self.relay.accepted != self._seen:
            self._seen = self.relay.accepted
            deadline = time.monotonic() + SETTLE_SECONDS
            while self.relay.open_connections and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(LOG_DELAY)
        self.proxy.poll()
        merged: dict[tuple[str, int, str, str], Refusal] = {}
        while self.pending:
            refusal = self.pending.popleft()
            key = (refusal.host, refusal.port, refusal.method, refusal.reason)
            first = merged.get(key)
            merged[key] = refusal if first is None else first.model_copy(update={"count": first.count + refusal.count})
        return list(merged.values())

    def close(self) -> None:
        """Stop relaying and forget the sandbox's policy; safe to call twice."""
        self.relay.close()
        self.proxy.release(self)
        remove_owned(self.folder)


def doctor_probe(config: ProxyConfig) -> str:
    """Start a squid of its own briefly, send it one request its policy refuses, and say what answered; raises
    ``EgressError`` with the reason when it cannot (``overnight doctor``)."""
    proxy = EgressProxy(config.model_copy(update={"upstream": None}))
    try:
        lease = proxy.open("doctor", ProxyPolicy(domains=("allowed.invalid",)))
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(10)
                sock.connect(str(lease.folder / SOCKET_NAME))
                sock.sendall(b"GET http://refused.invalid/ HTTP/1.0\r\nHost: refused.invalid\r\n\r\n")
                status = sock.recv(4096).split(b" ", 2)[1:2]
            refused = [r for r in lease.refusals() if r.host == "refused.invalid"]
        finally:
            lease.close()
        if status != [b"403"] or not refused:
            raise EgressError(f"squid answered {status!r} to a request its policy refuses, and logged {len(refused)}")
        version = subprocess.run([config.squid, "-v"], capture_output=True, text=True).stdout.split("\n", 1)[0]
        return f"{version.strip()}: started, refused a request outside its allowlist and logged it"
    except OSError as exc:
        raise EgressError(f"the egress proxy does not work: {exc}") from exc
    finally:
        proxy.close()
