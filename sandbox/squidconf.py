"""squid's configuration for the egress proxy (``sandbox/proxy.py``), and the helper it asks about each request.

The helper (run by squid as its own user, with the image-independent host python3 and no site packages) finds the
sandbox's policy by the request's source address, a file ``policies/ADDRESS`` the worker writes, and answers OK or
ERR with a reason squid keeps as a note; squid then refuses private destinations by address and logs refusals only.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import threading
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sandbox.base import SandboxUnavailableError
from sandbox.egress import BLOCKED

_PR_SET_PDEATHSIG = 1

BLOCKED_V6 = tuple(IPv6Network(net) for net in ("::/96", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64",
                                                  "2002::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
                                                  "2001:db8::/32"))  # fmt: skip
"""IPv6's loopback, unspecified, IPv4-compatible, mapped, NAT64 (both prefixes) and 6to4 forms of IPv4, discard,
unique-local, link-local, site-local, multicast, documentation."""
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
    ok = "OK read_only=1\n" if policy and policy.get("read_only") else "OK\n"
    sys.stdout.write(f"ERR reason={reason}\n" if reason else ok)
    sys.stdout.flush()
"""
METHOD_OVERRIDES = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")
"""Headers with which many frameworks (Rails, Laravel, Express, Google's APIs) take a GET for the method they name."""
REASONS = {
    "not-in-allowlist": "not in the allowlist",
    "read-only": "read-only policy",
    "private": "private address",
    "no-policy": "no policy for this sandbox",
}


def helper_python() -> str:
    """A python3 squid's user can run (the worker's own may sit under a root-only home): the system's first."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3"), sys.executable):
        if candidate and Path(candidate).is_file():
            return candidate
    raise EgressError("the egress proxy's policy helper needs a python3 that squid's user can run")


class EgressError(SandboxUnavailableError):
    """The egress proxy could not be started or used; no sandbox that needs it starts without it."""


def host_addresses() -> list[str]:
    """Every address of this host's own interfaces but loopback (which ``private`` holds), read when squid starts:
    squid must not connect to the host itself whatever range its address is in — a cloud VM's public address on
    eth0 would hand a sandbox every service listening on all addresses (as the set-up firewall's ``addrtype
    LOCAL`` rule keeps set-ups from them)."""
    found: set[IPv4Address | IPv6Address] = set()
    try:
        previous = ""
        for line in Path("/proc/net/fib_trie").read_text().splitlines():
            text = line.strip()
            if text.startswith("|--"):
                previous = text.split()[-1]
            elif text == "/32 host LOCAL" and previous:
                found.add(IPv4Address(previous))
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            found.add(IPv6Address(int(line.split()[0], 16)))
    except (OSError, ValueError, IndexError):
        pass
    return sorted(str(address) for address in found if not (address.is_loopback or address.is_link_local))


def squid_config(
    folder: Path, port: int, *, upstream: str | None, allowed_networks: tuple[object, ...], hosts_file: Path | None
) -> str:
    """squid's whole configuration: nothing cached, a helper that applies each sandbox's policy, refusals of
    private destinations by the address squid is about to connect to, and a log of refusals only."""
    private = " ".join(str(net) for net in (*BLOCKED, *BLOCKED_V6))
    lines = [
        f"http_port 127.0.0.1:{port}",
        "pid_filename none", "cache deny all", "cache_mem 8 MB", "netdb_filename none", "pinger_enable off",
        "shutdown_lifetime 0 seconds", "via off", "forwarded_for delete", "httpd_suppress_version_string on",
        "visible_hostname overnight-egress", "reply_header_access X-Cache deny all",
        "reply_header_access X-Cache-Lookup deny all",  # the host's name is none of the sandbox's business
        f"cache_log {folder}/cache.log", f"coredump_dir {folder}", "logfile_rotate 0",
        f"external_acl_type policy ttl=0 negative_ttl=0 children-max=8 children-startup=1 %>a %>rd %>rP %>rm "
        f"{helper_python()} -I -S {folder}/helper.py {folder}/policies",
        "acl policy external policy",
        f"acl private dst {private}",
        "acl mark_private annotate_transaction reason=private",
        "acl refused note reason",
        "http_access deny manager",
        "http_access deny !policy",
        "acl read_only note read_only 1",  # the helper's answer for a read-only lease: no header asks for a write
        *(f"request_header_access {name} deny read_only" for name in METHOD_OVERRIDES),
    ]  # fmt: skip
    if own := host_addresses():  # the host itself, whatever its range (and never an allowed one)
        lines += [f"acl own_host dst {' '.join(own)}", "http_access deny own_host mark_private"]
    if allowed_networks:
        lines.append(f"acl allowed_private dst {' '.join(str(net) for net in allowed_networks)}")
        lines.append("http_access deny private !allowed_private mark_private")
    else:
        lines.append("http_access deny private mark_private")
    lines.append("http_access allow all")
    if hosts_file is not None:
        lines.append(f"hosts_file {hosts_file}")
    lines += _upstream(upstream)
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


def spawn(argv: list[str], **options: Any) -> subprocess.Popen[bytes]:
    """``Popen`` from a thread that lives as long as this process: squid's parent-death signal fires when the
    thread that started it ends, and the caller's thread may be a short-lived one."""
    started: dict[str, Any] = {}
    ready = threading.Event()

    def keeper() -> None:
        try:
            started["process"] = subprocess.Popen(argv, **options)
        except (OSError, subprocess.SubprocessError) as exc:
            started["error"] = exc
        ready.set()
        threading.Event().wait()

    threading.Thread(target=keeper, name="overnight-egress-squid", daemon=True).start()
    ready.wait()
    if "error" in started:
        raise EgressError(f"could not start squid: {started['error']}")
    return started["process"]  # type: ignore[no-any-return]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def die_with_parent() -> None:  # in the child: squid dies with the worker process that started it
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
