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
import ctypes
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
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field

from sandbox.base import SandboxUnavailableError
from sandbox.egress import BLOCKED
from sandbox.image import SERVER_UID
from sandbox.reaper import owned_tempdir, remove_owned
from sandbox.relay import SOCKET_NAME, Relay

BLOCKED_V6 = tuple(IPv6Network(net) for net in ("::/127", "::ffff:0:0/96", "64:ff9b::/96", "fc00::/7", "fe80::/10",
                                                  "fec0::/10", "ff00::/8", "2001:db8::/32"))  # fmt: skip
"""IPv6's loopback, unspecified, mapped and NAT64 forms of IPv4, unique-local, link-local, multicast, documentation."""
MAX_PENDING = 1000
"""Refusals of one lease kept until they are read; more are counted into the last one."""
_PR_SET_PDEATHSIG = 1
HELPER = r"""
import ipaddress, json, os, sys
from urllib.parse import unquote
folder = sys.argv[1]
for line in sys.stdin:
    fields = [unquote(field) for field in line.split()]
    source, host, method = fields[0], fields[1].lower().rstrip("."), fields[3].upper()
    reason = None
    try:
        name = str(ipaddress.ip_address(source))
        with open(os.path.join(folder, name)) as handle:
            policy = json.load(handle)
    except (ValueError, OSError):
        policy, reason = None, "no-policy"
    if policy is not None:
        domains = policy.get("domains")
        if domains is not None and not any(host == d or (d.startswith("*.") and host.endswith(d[1:])) for d in domains):
            reason = "not-in-allowlist"
        elif policy.get("read_only") and method not in ("GET", "HEAD", "OPTIONS"):
            reason = "read-only"
    sys.stdout.write(f"ERR reason={reason}\n" if reason else "OK\n")
    sys.stdout.flush()
"""
REASONS = {
    "not-in-allowlist": "not in the allowlist",
    "read-only": "read-only policy",
    "private": "private address",
    "no-policy": "no policy for this sandbox",
}


class EgressError(SandboxUnavailableError):
    """The egress proxy could not be started or used; no sandbox that needs it starts without it."""


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


class Refusal(BaseModel):
    """One request the proxy refused (``count`` of them when several were alike)."""

    model_config = ConfigDict(frozen=True)

    host: str
    port: int
    method: str
    at: datetime
    reason: str
    count: int = 1


def squid_config(config: ProxyConfig, folder: Path, port: int) -> str:
    """squid's whole configuration: nothing cached, a helper that applies each sandbox's policy, refusals of
    private destinations by the address squid is about to connect to, and a log of refusals only."""
    private = " ".join(str(net) for net in (*BLOCKED, *BLOCKED_V6))
    lines = [
        f"http_port 127.0.0.1:{port}",
        "pid_filename none", "cache deny all", "cache_mem 8 MB", "netdb_filename none", "pinger_enable off",
        "shutdown_lifetime 0 seconds", "via off", "forwarded_for delete", "httpd_suppress_version_string on",
        f"cache_log {folder}/cache.log", f"coredump_dir {folder}", "logfile_rotate 0",
        f"external_acl_type policy ttl=0 negative_ttl=0 children-max=8 children-startup=1 %>a %>rd %>rP %>rm "
        f"/usr/bin/python3 -I -S {folder}/helper.py {folder}/policies",
        "acl policy external policy",
        f"acl private dst {private}",
        "acl mark_private annotate_transaction reason=private",
        "acl refused note reason",
        "http_access deny manager",
        "http_access deny !policy",
    ]  # fmt: skip
    if config.allowed_networks:
        lines.append(f"acl allowed_private dst {' '.join(str(net) for net in config.allowed_networks)}")
        lines.append("http_access deny private !allowed_private mark_private")
    else:
        lines.append("http_access deny private mark_private")
    lines.append("http_access allow all")
    if config.hosts_file is not None:
        lines.append(f"hosts_file {config.hosts_file}")
    lines += _upstream(config.upstream)
    lines += [
        "logformat refusals %ts.%03tu %>a %>rm %>rd %>rP %{reason}note",
        f"access_log stdio:{folder}/refusals.log logformat=refusals refused",
    ]
    return "\n".join(lines) + "\n"


def _upstream(proxy: str | None) -> list[str]:
    """A parent proxy every request goes through (the host's own way out)."""
    if not proxy:
        return []
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if not parts.hostname or parts.scheme not in ("http", ""):
        raise EgressError(f"the upstream proxy {proxy!r} must be an http:// address")
    login = f" login={unquote(parts.username)}:{unquote(parts.password or '')}" if parts.username else ""
    return [
        f"cache_peer {parts.hostname} parent {parts.port or 80} 0 no-query no-digest default{login}",
        "never_direct allow all",
    ]


class EgressProxy:
    """This worker process's squid, started on first use, and the sandboxes' leases on it."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._folder: Path | None = None
        self._port = 0
        self._offset = 0
        self._leases: dict[str, EgressLease] = {}

    def open(self, task_id: str, policy: ProxyPolicy) -> EgressLease:
        """A lease for one sandbox: its socket folder (``SandboxSpec.egress``) and its refusals."""
        with self._lock:
            self._start()
            assert self._folder is not None
            address = self._new_address()
            policy_file = self._folder / "policies" / address
            policy_file.write_text(policy.model_dump_json())
            policy_file.chmod(0o644)
            lease = EgressLease(self, address, policy_file, task_id)
            self._leases[address] = lease
            return lease

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
        try:
            account = pwd.getpwnam(self.config.user)
        except KeyError as exc:
            raise EgressError(f"the egress proxy's user {self.config.user!r} does not exist") from exc
        if self._folder is not None:
            remove_owned(self._folder)
        self._folder = folder = owned_tempdir("overnight-egress-", self.config.state_root)
        (folder / "policies").mkdir()
        (folder / "helper.py").write_text(HELPER)
        os.chmod(folder, 0o755)
        os.chown(folder, account.pw_uid, account.pw_gid)
        self._port = _free_port()
        (folder / "squid.conf").write_text(squid_config(self.config, folder, self._port))
        self._offset = 0
        self._process = subprocess.Popen(
            [self.config.squid, "-N", "-f", str(folder / "squid.conf")], user=account.pw_uid, group=account.pw_gid,
            extra_groups=[], preexec_fn=_die_with_parent, start_new_session=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
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
        """A connection to squid from a lease's own source address."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((address, 0))
            sock.connect(("127.0.0.1", self._port))
        except OSError:
            sock.close()
            raise
        return sock

    def poll(self) -> None:
        """Read the refusals squid logged since the last poll and hand each to its lease."""
        with self._lock:
            if self._folder is None:
                return
            try:
                with open(self._folder / "refusals.log", "rb") as log:
                    log.seek(self._offset)
                    data = log.read(4 * 2**20)
            except FileNotFoundError:
                return
            complete = data[: data.rfind(b"\n") + 1]
            self._offset += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                _dispatch(line, self._leases)

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
        refusal = Refusal(host=unquote(host)[:255], port=int(port) if port.isdigit() else 0, method=method[:16],
                          at=at, reason=REASONS.get(reason, reason[:80]))  # fmt: skip
    except ValueError:
        return
    leases[address].add(refusal)


class EgressLease:
    """One sandbox's way out: the socket the worker listens on (in ``folder``) and the refusals of its requests."""

    def __init__(self, proxy: EgressProxy, address: str, policy_file: Path, task_id: str) -> None:
        self.proxy = proxy
        self.address = address
        self.policy_file = policy_file
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

    def add(self, refusal: Refusal) -> None:
        if len(self.pending) < MAX_PENDING:
            self.pending.append(refusal)
        else:
            last = self.pending.pop()
            self.pending.append(last.model_copy(update={"count": last.count + refusal.count}))

    def refusals(self) -> list[Refusal]:
        """The refusals since the last call, alike ones (host, port, method, reason) counted into the first."""
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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:  # in the child: squid dies with the worker process that started it
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
