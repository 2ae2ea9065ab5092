"""The set-up phase's network: the package registries (directly or through the configured proxy), and nothing
of the host, its loopback, the link-local (cloud metadata) range or private networks.

One iptables chain, ``OVERNIGHT-SETUP``, decides for both backends; only set-up traffic is sent through it:
Docker's set-up containers sit on a bridge of their own (``ovn-setup0``: forwarded traffic from
``DOCKER-USER``, traffic to the host's own addresses from ``INPUT``), and bubblewrap's set-up network is
relayed by slirp4netns processes running under a group of their own (``OUTPUT``, matched by that group).
Installing is idempotent: the chain is rewritten in one ``iptables-restore`` transaction and the jumps are
added only when missing. It needs root in the network namespace where the sandbox traffic leaves.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import shutil
import socket
import subprocess
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker.errors
from pydantic import BaseModel, ConfigDict, field_validator

from sandbox.base import SandboxUnavailableError

CHAIN = "OVERNIGHT-SETUP"
SETUP_NETWORK = "overnight-setup"
"""The Docker network set-up containers join."""
SETUP_BRIDGE = "ovn-setup0"
"""Its bridge device on the engine's host (named, so the firewall can match it before it exists)."""
RELAY_GROUP = "overnight-egress"
"""The group bubblewrap's slirp4netns relays run under; the firewall matches their traffic by it."""
BLOCKED = tuple(
    IPv4Network(net)
    for net in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
    )
)  # fmt: skip
"""This host's network, loopback, link-local (instance metadata at 169.254.169.254), private, carrier-grade
NAT (some clouds' metadata), multicast and reserved ranges."""
REJECT = ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]
NEVER_ALLOWED = (IPv4Network("127.0.0.0/8"), IPv4Network("169.254.0.0/16"))
BRIDGE_OPTIONS = {"com.docker.network.bridge.name": SETUP_BRIDGE, "com.docker.network.bridge.enable_icc": "false"}


class EgressError(SandboxUnavailableError):
    """The set-up network's firewall could not be put in place; no set-up sandbox gets a network without it."""


class EgressPolicy(BaseModel):
    """Where set-up sandboxes may connect besides the public internet."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    allowed_networks: tuple[IPv4Network, ...] = ()
    """Private ranges set-up sandboxes may reach anyway (an internal registry); never the host's own addresses."""
    proxy: str | None = None
    """The proxy URL set-up sandboxes are given (OVERNIGHT_SANDBOX_PROXY): its address and port stay reachable
    even on the host or a private network."""
    install: bool = True
    """The worker installs the firewall itself (it must be root where the sandbox traffic leaves); off: an
    operator keeps it in place with ``overnight firewall`` (compose, where the worker is not on the host)."""
    resolv_conf: Path = Path("/etc/resolv.conf")
    """Whose nameservers set-up sandboxes may query (port 53 only) even on a private or host address."""

    @field_validator("allowed_networks")
    @classmethod
    def _not_loopback_or_link_local(cls, value: tuple[IPv4Network, ...]) -> tuple[IPv4Network, ...]:
        for network in value:
            if any(network.overlaps(never) for never in NEVER_ALLOWED):
                raise ValueError(f"{network}: loopback and link-local (metadata) ranges cannot be allowed")
        return value


def resolvers(resolv_conf: Path) -> list[IPv4Address]:
    """The IPv4 nameservers of a resolv.conf (Docker's and slirp4netns' DNS forward to them)."""
    found: list[IPv4Address] = []
    try:
        lines = resolv_conf.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                address = ipaddress.ip_address(fields[1].split("%")[0])
            except ValueError:
                continue
            if isinstance(address, IPv4Address) and address not in found:
                found.append(address)
    return found


def proxy_endpoints(proxy: str | None) -> list[tuple[IPv4Address, int]]:
    """The addresses and port of the proxy URL (its name resolved now)."""
    if not proxy:
        return []
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if not parts.hostname:
        raise EgressError(f"the set-up proxy {proxy!r} names no host")
    port = parts.port or (443 if parts.scheme == "https" else 1080 if parts.scheme.startswith("socks") else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        raise EgressError(f"the set-up proxy's host {parts.hostname!r} does not resolve: {exc}") from exc
    return sorted({(IPv4Address(info[4][0]), port) for info in infos})


def chain_rules(policy: EgressPolicy) -> list[list[str]]:
    """The rules of ``OVERNIGHT-SETUP``, first match wins; what no rule rejects is allowed (RETURN)."""
    # Replies on connections someone was allowed to open (the host's own to a set-up container included).
    rules: list[list[str]] = [["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"]]
    for address in resolvers(policy.resolv_conf):
        for protocol in ("udp", "tcp"):
            rules.append(["-d", f"{address}/32", "-p", protocol, "--dport", "53", "-j", "RETURN"])
    for address, port in proxy_endpoints(policy.proxy):
        rules.append(["-d", f"{address}/32", "-p", "tcp", "--dport", str(port), "-j", "RETURN"])
    rules.append(["-m", "addrtype", "--dst-type", "LOCAL", *REJECT])  # every address of the host itself
    for network in policy.allowed_networks:
        rules.append(["-d", str(network), "-j", "RETURN"])
    for network in BLOCKED:
        rules.append(["-d", str(network), *REJECT])
    return rules


def docker_jumps() -> list[tuple[str, list[str]]]:
    """Forwarded traffic and traffic to the host from Docker's set-up bridge."""
    return [("DOCKER-USER", ["-i", SETUP_BRIDGE]), ("INPUT", ["-i", SETUP_BRIDGE])]


def relay_jumps(gid: int) -> list[tuple[str, list[str]]]:
    """What bubblewrap's slirp4netns relays send (they connect from the host on the sandbox's behalf)."""
    return [("OUTPUT", ["-m", "owner", "--gid-owner", str(gid)])]


def install(policy: EgressPolicy, jumps: Sequence[tuple[str, list[str]]], *, iptables: str = "iptables") -> None:
    """Write the chain (one transaction) and add each missing jump at the top of its chain."""
    restore = ["*filter", f":{CHAIN} - [0:0]"]
    restore += [" ".join(["-A", CHAIN, *rule]) for rule in chain_rules(policy)]
    restore.append("COMMIT\n")
    _run([f"{iptables}-restore", "--wait", "--noflush"], "\n".join(restore))
    for parent, match in jumps:
        if not _ok([iptables, "--wait", "-C", parent, *match, "-j", CHAIN]):
            _run([iptables, "--wait", "-I", parent, "1", *match, "-j", CHAIN])


def installed(jumps: Sequence[tuple[str, list[str]]], *, iptables: str = "iptables") -> bool:
    """Whether every jump into a non-empty chain is in place."""
    listing = subprocess.run([iptables, "--wait", "-S", CHAIN], capture_output=True, text=True)
    if listing.returncode != 0 or "REJECT" not in listing.stdout:
        return False
    return all(_ok([iptables, "--wait", "-C", parent, *match, "-j", CHAIN]) for parent, match in jumps)


def docker_iptables() -> str:
    """The iptables variant (nft or legacy) whose tables hold Docker's DOCKER-USER chain on this host."""
    require_root()
    for variant in ("iptables", "iptables-legacy", "iptables-nft"):
        if shutil.which(variant) and _ok([variant, "--wait", "-S", "DOCKER-USER"]):
            return variant
    raise EgressError(
        "the set-up network's firewall could not be installed: no DOCKER-USER chain in this network namespace "
        "(is the Docker engine on this host?). Run `overnight firewall` where the engine runs and set "
        "OVERNIGHT_SANDBOX_SETUP_FIREWALL=external, or set OVERNIGHT_SANDBOX_SETUP_NETWORK=false"
    )


def require_root() -> None:
    if os.geteuid() != 0:
        raise EgressError(
            "the set-up network's firewall needs a root worker (it installs iptables rules); run the worker as "
            "root, have an operator run `overnight firewall` (OVERNIGHT_SANDBOX_SETUP_FIREWALL=external), or set "
            "OVERNIGHT_SANDBOX_SETUP_NETWORK=false"
        )
    if shutil.which("iptables") is None:
        raise EgressError("the set-up network's firewall needs iptables (apt-get install iptables)")


def relay_gid() -> int:
    """The relay group's id; made (a system group) the first time."""
    try:
        return grp.getgrnam(RELAY_GROUP).gr_gid
    except KeyError:
        pass
    require_root()
    made = subprocess.run(["groupadd", "--system", RELAY_GROUP], capture_output=True, text=True)
    if made.returncode not in (0, 9):  # 9: made meanwhile by another worker
        raise EgressError(f"could not make the group {RELAY_GROUP}: {made.stderr.strip()}")
    return grp.getgrnam(RELAY_GROUP).gr_gid


def _ok(argv: list[str]) -> bool:
    return subprocess.run(argv, capture_output=True).returncode == 0


def _run(argv: list[str], stdin: str | None = None) -> None:
    try:
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    except OSError as exc:
        raise EgressError(f"the set-up network's firewall could not be installed: {exc}") from exc
    if result.returncode != 0:
        raise EgressError(
            f"the set-up network's firewall could not be installed ({' '.join(argv[:3])}): {result.stderr.strip()}"
        )


def docker_setup_network(client: Any, policy: EgressPolicy) -> str:
    """The set-up containers' network (made on first use, inter-container traffic off; its id), with its firewall
    in place."""
    network = _find_network(client)
    if network is None:
        try:
            client.networks.create(SETUP_NETWORK, driver="bridge", options=BRIDGE_OPTIONS, check_duplicate=True,
                                   labels={"dev.overnight.purpose": "setup"})  # fmt: skip
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: another worker made it meanwhile
                raise EgressError(f"could not make the Docker network {SETUP_NETWORK}: {exc}") from exc
        network = _find_network(client)
    options = (network.attrs.get("Options") or {}) if network is not None else {}
    if any(options.get(name) != value for name, value in BRIDGE_OPTIONS.items()):
        raise EgressError(f"the Docker network {SETUP_NETWORK} exists with other options than {BRIDGE_OPTIONS}: "
                          f"remove it (docker network rm {SETUP_NETWORK}) and it is made again")  # fmt: skip
    if policy.install:
        if not Path("/sys/class/net", SETUP_BRIDGE).exists():
            raise EgressError(
                f"the set-up network's firewall could not be installed: its bridge {SETUP_BRIDGE} is not in this "
                "network namespace (the Docker engine runs elsewhere). Run `overnight firewall` where the engine "
                "runs and set OVERNIGHT_SANDBOX_SETUP_FIREWALL=external, or set OVERNIGHT_SANDBOX_SETUP_NETWORK=false"
            )
        install(policy, docker_jumps(), iptables=docker_iptables())
    return str(network.id)  # by id: two of the same name (see below) would be ambiguous


def _find_network(client: Any) -> Any:
    try:
        found = [n for n in client.networks.list(names=[SETUP_NETWORK]) if n.name == SETUP_NETWORK]
    except docker.errors.DockerException as exc:
        raise EgressError(f"could not list Docker networks: {exc}") from exc
    # Two workers racing on an old engine can make two; the oldest is kept, the others left unused.
    return min(found, key=lambda n: n.attrs.get("Created", "")) if found else None
