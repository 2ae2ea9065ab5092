"""Red team of the egress proxy (issue 18 part 2; ``sandbox/proxy.py``, ``sandbox/relay.py``, ``sandbox/squidconf.py``):
each test tries one way out of an agent sandbox's network policy and fails if it works.

Through the real squid and the real relays, from real sandboxes on both backends where the sandbox is part of the
attack. Nothing leaves this machine: the hosts tried are the machine's own addresses, loopback, and the test web
servers of ``tests/egress_web.py`` (loopback addresses named by a hosts file of the tests' own).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path

import pytest

from sandbox.base import Sandbox, SandboxBackend
from sandbox.proxy import EgressLease, EgressProxy, ProxyConfig, ProxyPolicy
from tests.egress_web import PUBLIC, StartLeased, Web, egress_web, leased_sandboxes

SECRET = f"host-service-{secrets.token_hex(8)}"
"""What the test's host service answers: seeing it anywhere in a sandbox means the sandbox reached the host."""


@pytest.fixture(scope="module")
def web() -> Iterator[Web]:
    with egress_web() as servers:
        yield servers


@pytest.fixture(scope="module")
def plain_proxy() -> Iterator[EgressProxy]:
    """A proxy as a worker runs it: the host's own /etc/hosts, no private network allowed."""
    folder = Path(tempfile.mkdtemp(prefix="overnight-redteam-egress-"))
    folder.chmod(0o755)
    proxy = EgressProxy(ProxyConfig(lease_root=folder / "leases"))
    try:
        yield proxy
    finally:
        proxy.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def host_service() -> Iterator[int]:
    """A service of the host on one port of every address it has (as Docker's published ports, an API on 0.0.0.0,
    a database a container reaches do), loopback included; it answers SECRET to anything. Each address is bound by
    itself, so the other tests' servers on 127.0.0.x are never shadowed."""
    addresses = ["127.0.0.1", "::1", *host_addresses()]
    listeners: list[socket.socket] = []
    port = 0
    for _ in range(20):  # a port free on every address
        for listener in listeners:
            listener.close()
        listeners = []
        try:
            for address in addresses:
                listener = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
                listeners.append(listener)
                listener.bind((address, port))
                port = int(listener.getsockname()[1])
            break
        except OSError:
            port = 0
    answer = f"HTTP/1.0 200 OK\r\nContent-Length: {len(SECRET)}\r\n\r\n{SECRET}".encode()

    def serve(listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(4096)
                    conn.sendall(answer)
                except OSError:
                    pass

    for listener in listeners:
        listener.listen(64)
        threading.Thread(target=serve, args=(listener,), daemon=True).start()
    try:
        yield port
    finally:
        for listener in listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread in accept(); close alone would not
            listener.close()


def host_addresses() -> list[str]:
    """Every address of this host's interfaces but loopback and link-local (those need a scope or are refused by
    their range anyway): what a public cloud host has on eth0, Docker's bridges, the set-up bridge."""
    shown = json.loads(subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, check=True, text=True).stdout)
    found = []
    for interface in shown:
        for entry in interface.get("addr_info", []):
            address = ip_address(entry["local"])
            if not (address.is_loopback or address.is_link_local):
                found.append(str(address))
    return found


@pytest.fixture
def leased(new_workspace: Callable[..., Path]) -> Iterator[StartLeased]:
    with leased_sandboxes(new_workspace, "redteam") as start:
        yield start


def _raw(lease: EgressLease, data: bytes, *, wait: float = 5.0) -> bytes:
    """Bytes sent to a lease's socket as the exec server's relay would, and everything squid answers."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(wait)
        sock.connect(str(lease.folder / "proxy.sock"))
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            pass
    return answer


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


IN_SANDBOX_REQUEST = """python3 - <<'EOF'
import socket, sys
out = []
for request in {requests!r}:
    try:
        s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
        s.sendall(request.encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        out.append(data.decode(errors="replace"))
    except OSError as exc:
        out.append(f"ERROR {{exc}}")
print("\\n=====\\n".join(out))
EOF"""


def in_sandbox(sandbox: Sandbox, *requests: str) -> list[str]:
    """What squid answers to each raw request, sent from a command in the sandbox through its 127.0.0.1:3128."""
    result = sandbox.run(IN_SANDBOX_REQUEST.format(requests=list(requests)), timeout=120)
    answers = result.stdout.split("\n=====\n")
    assert len(answers) == len(requests), result
    return answers


# --- the host itself -----------------------------------------------------------------------------------------


def test_the_hosts_own_addresses_are_refused_through_the_proxy(
    backend: SandboxBackend,
    plain_proxy: EgressProxy,
    host_service: int,
    leased: Callable[..., tuple[Sandbox, EgressLease]],
) -> None:
    """The set-up firewall rejects every address of the host itself (``addrtype LOCAL``) whatever its range; the
    proxy must too. A host with a public address on its interface (most cloud VMs, this machine's 192.0.2.2)
    would otherwise hand a ``full`` (or any allowlist naming such an address) sandbox every service the host
    listens with on all addresses: the API, a published database port, Redis."""
    addresses = host_addresses()
    assert addresses, "this machine shows no address of its own to try"
    sandbox, _ = leased(backend, plain_proxy, ProxyPolicy(domains=None))
    requests = []
    for address in addresses:
        literal = f"[{address}]" if ":" in address else address
        requests.append(f"GET http://{literal}:{host_service}/ HTTP/1.0\r\nHost: {literal}\r\n\r\n")
        requests.append(f"CONNECT {literal}:{host_service} HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n")
    answers = in_sandbox(sandbox, *requests)
    reached = [request.split("\r\n")[0] for request, answer in zip(requests, answers, strict=True) if SECRET in answer]
    assert not reached, f"the sandbox reached the host's own service through the proxy: {reached}"


# --- what squid itself offers --------------------------------------------------------------------------------


def test_loopback_in_every_spelling_is_refused(plain_proxy: EgressProxy, host_service: int) -> None:
    """Loopback however the address is written (names from the host's /etc/hosts, decimal, octal, hex, short
    forms, IPv6 loopback and IPv4 in IPv6) never reaches the host's service; the plain ones are refused as
    private and recorded so."""
    lease = plain_proxy.open("redteam", ProxyPolicy(domains=None))
    try:
        port = host_service
        refused = ["localhost", "127.0.0.1", "2130706433", "0177.0.0.1", "0x7f.0.0.1", "0x7f000001", "127.1",
                   "0.0.0.0", "0", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[64:ff9b::7f00:1]",
                   "[64:ff9b:1::7f00:1]", "[::127.0.0.1]", "[2002:7f00:1::]"]  # fmt: skip
        harmless = ["localhost.", "LOCALHOST", "127.000.000.001"]
        for host in refused + harmless:
            for request in (f"GET http://{host}:{port}/ HTTP/1.0\r\n\r\n", f"CONNECT {host}:{port} HTTP/1.0\r\n\r\n"):
                answer = _raw(lease, request.encode())
                assert SECRET.encode() not in answer, f"{request!r} reached the host's service"
                if host in refused:
                    assert _status(answer) == 403, (request, answer[:200])
    finally:
        lease.close()


def test_the_manager_interface_and_squids_own_pages_are_refused(plain_proxy: EgressProxy) -> None:
    """squid's cache manager (``cache_object://``, ``/squid-internal-mgr/``, on any host name, and asked of squid
    itself in origin form) answers nothing but 403: it would show every client's requests and let one purge."""
    lease = plain_proxy.open("redteam", ProxyPolicy(domains=None))
    port = plain_proxy._port
    try:
        for request in (
            "GET cache_object://localhost/info HTTP/1.0\r\n\r\n",
            "GET cache_object://127.0.0.1/menu HTTP/1.0\r\n\r\n",
            "GET http://example.test/squid-internal-mgr/info HTTP/1.0\r\n\r\n",
            f"GET http://127.0.0.1:{port}/squid-internal-mgr/client_list HTTP/1.0\r\n\r\n",
            f"GET http://{socket.gethostname()}:{port}/squid-internal-mgr/info HTTP/1.0\r\n\r\n",
            f"GET /squid-internal-mgr/info HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n",
            "GET /squid-internal-mgr/info HTTP/1.0\r\n\r\n",
            "PURGE http://example.test/ HTTP/1.0\r\n\r\n",
        ):
            answer = _raw(lease, request.encode())
            assert _status(answer) in (400, 403), (request, answer[:300])
            assert b"Squid Object Cache" not in answer and b"Cache Manager menu" not in answer
    finally:
        lease.close()


def test_squids_answers_do_not_name_the_host(web: Web) -> None:
    """Neither a refusal page nor an answer passed through names the worker's host (squid's X-Cache headers and
    error pages carry its host name by default)."""
    lease = web.proxy.open("redteam", ProxyPolicy(domains=("allowed.test",)))
    host = socket.gethostname()
    try:
        for request in (
            f"GET http://allowed.test:{web.port}/x HTTP/1.0\r\n\r\n",
            "GET http://refused.test/ HTTP/1.0\r\n\r\n",
        ):
            answer = _raw(lease, request.encode()).decode(errors="replace")
            assert f"by {host} " not in answer and f"from {host}" not in answer and "X-Cache" not in answer, answer
    finally:
        lease.close()


class _Counting(BaseHTTPRequestHandler):
    """Answers every GET with a response any cache would keep for an hour, and remembers what it was sent."""

    seen: list[tuple[str, dict[str, str]]] = []

    def do_GET(self) -> None:
        type(self).seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        body = f"answer {len(type(self).seen)}".encode()
        self.send_response(200)
        self.send_header("Cache-Control", "public, max-age=3600")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def counting(web: Web) -> Iterator[int]:
    _Counting.seen = []
    server = ThreadingHTTPServer((PUBLIC, 0), _Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_nothing_is_cached_across_leases_and_the_host_header_is_the_urls(web: Web, counting: int) -> None:
    """One sandbox's answer is never served to another (a poisoned package index would reach the next task):
    the second lease's identical request reaches the origin again. And the origin is asked for the URL's host,
    not a Host header the sandbox wrote (domain fronting of a shared front end behind an allowed name)."""
    first = web.proxy.open("redteam-a", ProxyPolicy(domains=("allowed.test",)))
    second = web.proxy.open("redteam-b", ProxyPolicy(domains=("allowed.test",)))
    try:
        url = f"http://allowed.test:{counting}/simple/pkg/"
        one = _raw(first, f"GET {url} HTTP/1.1\r\nHost: elsewhere.test\r\nConnection: close\r\n\r\n".encode())
        two = _raw(second, f"GET {url} HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n".encode())
        assert one.endswith(b"answer 1") and two.endswith(b"answer 2"), (one, two)
        assert len(_Counting.seen) == 2
        assert [headers["host"] for _, headers in _Counting.seen] == [f"allowed.test:{counting}"] * 2
        assert all("x-forwarded-for" not in headers and "via" not in headers for _, headers in _Counting.seen)
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(
    "host",
    [
        "evil-pkg.test", "pkgtest", "pkg.test.evil.test", "a.pkg.test.evil.test", "xpkg.test", "pkg.test",
        "allowed.test@elsewhere.test", "elsewhere.test#.pkg.test", "elsewhere.test%2f.pkg.test",
    ],
)  # fmt: skip
def test_allowlist_lookalikes_are_refused(web: Web, host: str) -> None:
    """``*.pkg.test`` and ``allowed.test`` hold against look-alike names, userinfo and fragments."""
    lease = web.proxy.open("redteam", ProxyPolicy(domains=("*.pkg.test", "allowed.test")))
    try:
        answer = _raw(lease, f"GET http://{host}:{web.port}/ HTTP/1.0\r\n\r\n".encode())
        assert _status(answer) != 200 and PUBLIC.encode() not in answer, answer[:300]
        answer = _raw(lease, f"CONNECT {host}:{web.port} HTTP/1.0\r\n\r\n".encode())
        assert _status(answer) != 200, answer[:300]
    finally:
        lease.close()


def test_allowed_names_in_other_spellings_reach_only_their_own_host(web: Web) -> None:
    """Upper case and a trailing dot are the same name (allowed, and to the same host); nothing else follows."""
    lease = web.proxy.open("redteam", ProxyPolicy(domains=("*.pkg.test", "allowed.test")))
    try:
        for host in ("ALLOWED.test", "allowed.test.", "A.PKG.TEST", "a.pkg.test."):
            answer = _raw(lease, f"GET http://{host}:{web.port}/x HTTP/1.0\r\n\r\n".encode())
            assert _status(answer) == 200 and answer.endswith(f"{PUBLIC} GET /x\n".encode()), (host, answer[-200:])
    finally:
        lease.close()


def test_read_only_holds_for_pipelined_and_lowercase_methods(web: Web) -> None:
    """Under read-only, a POST pipelined behind an allowed GET on one connection, a lower-case ``post``, an
    extension method and every CONNECT are refused (each request is judged, not the connection)."""
    lease = web.proxy.open("redteam", ProxyPolicy(domains=("allowed.test",), read_only=True))
    url = f"http://allowed.test:{web.port}"
    try:
        pipelined = _raw(lease, (
            f"GET {url}/a HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
            f"POST {url}/b HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 0\r\n\r\n"
            f"DELETE {url}/c HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n"
        ).encode())  # fmt: skip
        assert pipelined.count(b"HTTP/1.1 200") == 1 and b"POST /b" not in pipelined and b"DELETE" not in pipelined
        for method in ("post", "PUT", "PATCH", "DELETE", "PROPPATCH", "MKCOL"):
            answer = _raw(lease, f"{method} {url}/d HTTP/1.0\r\nContent-Length: 0\r\n\r\n".encode())
            assert _status(answer) == 403, (method, answer[:200])
        assert _status(_raw(lease, f"CONNECT allowed.test:{web.port} HTTP/1.0\r\n\r\n".encode())) == 403
        assert _status(_raw(lease, b"CONNECT allowed.test:443 HTTP/1.0\r\n\r\n")) == 403
    finally:
        lease.close()


def test_read_only_does_not_pass_method_override_headers(web: Web, counting: int) -> None:
    """A read-only GET must not carry a request to write: frameworks (Rails, Laravel, Express's method-override,
    Google's APIs) treat ``GET`` with ``X-HTTP-Method-Override: DELETE`` as a DELETE. squid must drop those headers
    for a read-only lease (or refuse the request)."""
    lease = web.proxy.open("redteam", ProxyPolicy(domains=("allowed.test",), read_only=True))
    try:
        _raw(lease, (
            f"GET http://allowed.test:{counting}/repos/x HTTP/1.1\r\nHost: allowed.test\r\n"
            "X-HTTP-Method-Override: DELETE\r\nX-HTTP-Method: DELETE\r\nX-Method-Override: PUT\r\n"
            "Connection: close\r\n\r\n"
        ).encode())  # fmt: skip
        overrides = [
            {name: value for name, value in headers.items() if "method" in name} for _, headers in _Counting.seen
        ]
        assert not any(overrides), f"a read-only lease's GET reached the origin with {overrides}"
    finally:
        lease.close()
    writer = web.proxy.open("redteam-rw", ProxyPolicy(domains=("allowed.test",)))
    try:  # a lease that may write keeps its headers: the stripping is the read-only policy's, not everyone's
        _raw(writer, (
            f"GET http://allowed.test:{counting}/repos/y HTTP/1.1\r\nHost: allowed.test\r\n"
            "X-HTTP-Method-Override: PATCH\r\nConnection: close\r\n\r\n"
        ).encode())  # fmt: skip
        assert _Counting.seen[-1][1].get("x-http-method-override") == "PATCH"
    finally:
        writer.close()


# --- the refusals the worker reads back --------------------------------------------------------------------------

_HOST_CHARACTERS = re.compile(r"[A-Za-z0-9._:\[\]%*-]{1,255}")


def test_refusals_name_hosts_without_line_breaks_spaces_or_control_characters(
    backend: SandboxBackend, web: Web, leased: Callable[..., tuple[Sandbox, EgressLease]]
) -> None:
    """The refusal log becomes network_blocked events (the task result, ``overnight logs`` in a terminal, the pull
    request, the web feed): a host name the sandbox makes up must arrive as one printable token, never a line
    break, an escape sequence or words, and never as another lease's refusal."""
    sandbox, lease = leased(backend, web.proxy, ProxyPolicy(domains=("allowed.test",)))
    other = web.proxy.open("redteam-other", ProxyPolicy(domains=("allowed.test",)))
    try:
        hosts = [
            f"a%0a{other.address}%20GET%20blamed.test%2080%20private",
            "x%1b%5b2J%1b%5b31mred",
            "b%0d%0aSet-Cookie:%20x",
            "tab%09host",
            "nul%00host",
            "a" * 3000 + ".test",
            "snow%e2%98%83man",
        ]
        in_sandbox(sandbox, *(f"GET http://{host}:{web.port}/ HTTP/1.0\r\n\r\n" for host in hosts),
                   *(f"CONNECT {host}:443 HTTP/1.0\r\n\r\n" for host in hosts[:3]))  # fmt: skip
        refusals = lease.refusals()
        assert refusals, "the proxy refused nothing"
        bad = [r.host for r in refusals if not _HOST_CHARACTERS.fullmatch(r.host) or len(r.method) > 16]
        assert not bad, f"refused hosts that are not one printable token: {bad!r}"
        assert other.refusals() == []
    finally:
        other.close()


# --- no other way out of the sandbox -----------------------------------------------------------------------------

NO_WAY_OUT = r"""python3 - <<'EOF'
import socket
def attempt(name, make):
    try:
        make()
        print(name, "REACHED")
    except OSError as exc:
        print(name, "refused", type(exc).__name__)
def udp_dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
    s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01", (__NS__, 53))
    s.recvfrom(512)
def tcp(address, family=socket.AF_INET):
    def go():
        s = socket.socket(family, socket.SOCK_STREAM); s.settimeout(3); s.connect(address); s.close()
    return go
def abstract():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(3); s.connect(__ABSTRACT__); s.close()
def take_the_relay_port():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1); s.bind(("127.0.0.1", 3128)); s.listen(1)
def raw_icmp():
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).sendto(b"\x08\0\0\0\0\0\0\0", (__NS__, 0))
def packet():
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
attempt("udp-dns", udp_dns)
attempt("abstract-unix", abstract)
attempt("relay-port", take_the_relay_port)
attempt("raw-icmp", raw_icmp)
attempt("af-packet", packet)
for address in __V4__:
    attempt("tcp4 " + address, tcp((address, __PORT__)))
for address in __V6__:
    attempt("tcp6 " + address, tcp((address, __PORT__, 0, 0), socket.AF_INET6))
EOF
getent hosts example.com >/dev/null && echo "getent REACHED" || echo "getent refused"
"""


def test_a_sandbox_with_a_lease_has_no_way_out_but_the_relay(
    backend: SandboxBackend,
    web: Web,
    host_service: int,
    leased: Callable[..., tuple[Sandbox, EgressLease]],
) -> None:
    """With a lease, the sandbox still has no network of its own: no DNS (UDP to the host's nameserver, getent),
    no TCP to the host's addresses v4 or v6, no raw or packet sockets, no abstract Unix socket of the host (they
    are per network namespace), and no way to take 127.0.0.1:3128 from the exec server's relay — which still
    answers afterwards."""
    token = secrets.token_hex(6)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(f"\0overnight-redteam-{token}")
    abstract.listen(4)
    nameservers = [line.split()[1] for line in Path("/etc/resolv.conf").read_text().splitlines()
                   if line.startswith("nameserver")] or ["127.0.0.53"]  # fmt: skip
    addresses = host_addresses()
    v4 = ["127.0.0.1", "172.17.0.1", "10.0.2.2", "169.254.169.254"] + [a for a in addresses if ":" not in a]
    v6 = ["::1"] + [a for a in addresses if ":" in a]
    try:
        sandbox, _ = leased(backend, web.proxy, ProxyPolicy(domains=("allowed.test",)))
        script = NO_WAY_OUT
        for name, value in (("NS", repr(nameservers[0])), ("ABSTRACT", repr(f"\0overnight-redteam-{token}")),
                            ("V4", repr(v4)), ("V6", repr(v6)), ("PORT", str(host_service))):  # fmt: skip
            script = script.replace(f"__{name}__", value)
        out = sandbox.run(script, timeout=120).stdout
        assert "REACHED" not in out and out.count("refused") == 6 + len(v4) + len(v6), out
        answer = sandbox.run(f"curl -sS --max-time 10 http://allowed.test:{web.port}/still", timeout=30).stdout
        assert answer == f"{PUBLIC} GET /still\n", answer
        unix = sandbox.run("cat /proc/net/unix").stdout
        assert f"overnight-redteam-{token}" not in unix
    finally:
        abstract.close()


def test_many_connections_cost_the_sandbox_its_own_relay_only(
    backend: SandboxBackend, web: Web, leased: Callable[..., tuple[Sandbox, EgressLease]]
) -> None:
    """A command that opens 400 connections to the proxy and holds them gets at most its relay's limit through;
    the worker side holds no more, and another sandbox's requests still go through meanwhile."""
    hog, hog_lease = leased(backend, web.proxy, ProxyPolicy(domains=("allowed.test",)))
    other, _ = leased(backend, web.proxy, ProxyPolicy(domains=("allowed.test",)))
    hold = (
        "python3 - <<'EOF'\nimport socket, time\nheld = []\nfor _ in range(400):\n"
        "    try:\n        held.append(socket.create_connection(('127.0.0.1', 3128), timeout=2))\n"
        "    except OSError:\n        pass\nprint(len(held), flush=True)\ntime.sleep(6)\nEOF"
    )
    results: list[str] = []
    holder = threading.Thread(target=lambda: results.append(hog.run(hold, timeout=90).stdout))
    holder.start()
    try:
        peak = 0
        for _ in range(40):
            peak = max(peak, hog_lease.relay.open_connections)
            if peak >= hog_lease.relay.limit:
                break
            threading.Event().wait(0.1)
        answer = other.run(f"curl -sS --max-time 10 http://allowed.test:{web.port}/other", timeout=30).stdout
        assert answer == f"{PUBLIC} GET /other\n", answer
        assert 0 < peak <= hog_lease.relay.limit
    finally:
        holder.join(timeout=90)
    assert results and results[0].strip().isdigit(), results


FLOOD = """python3 - <<'EOF'
import socket, threading, time
host = "h" * 8000 + ".test"
sent, deadline = [0] * 16, time.monotonic() + 60
def flood(index):
    while sent[index] < 4500 and time.monotonic() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", 3128), timeout=5)
            s.sendall(f"GET http://{index}x{sent[index]}{host}/ HTTP/1.0\\r\\n\\r\\n".encode())
            while s.recv(65536):
                pass
            s.close()
            sent[index] += 1
        except OSError:
            pass
threads = [threading.Thread(target=flood, args=(i,)) for i in range(16)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print("sent", sum(sent))
EOF"""


def test_one_sandboxs_refusals_neither_fill_the_hosts_disk_nor_hide_anothers(
    backend: SandboxBackend, web: Web, leased: Callable[..., tuple[Sandbox, EgressLease]]
) -> None:
    """squid logs each refusal on the host (outside every sandbox disk limit): a sandbox that makes refused requests
    with long host names writes about 300 bytes of the host's disk each (squid cuts the name at 256), over 1 GB an
    hour from one command. Another task's refusal made after such a flood is still reported at its next read (its
    network_blocked events and the pull request's blocked hosts depend on it), and once the worker has read them
    all, the log on the host holds at most 16 MiB, however many there were (here 72000, about 22 MB)."""
    sandbox, lease = leased(backend, web.proxy, ProxyPolicy(domains=("allowed.test",)))
    other = web.proxy.open("redteam-other", ProxyPolicy(domains=("allowed.test",)))
    try:
        flood = sandbox.run(FLOOD, timeout=120)
        assert int(flood.stdout.split()[-1]) >= 60000, flood
        assert _status(_raw(other, b"GET http://after-the-flood.test/ HTTP/1.0\r\n\r\n")) == 403
        assert [r.host for r in other.refusals()] == ["after-the-flood.test"], "another lease's refusal went unread"
        total = 0
        for _ in range(100):
            batch = lease.refusals()
            if not batch:
                break
            total += sum(refusal.count for refusal in batch)
            assert all(len(refusal.host) <= 255 for refusal in batch)
        assert total >= 60000
    finally:
        other.close()
    assert web.proxy._folder is not None
    logged = sum(path.stat().st_size for path in web.proxy._folder.iterdir() if path.is_file())
    assert logged <= 16 * 2**20, f"squid's folder on the host holds {logged / 2**20:.0f} MiB after all was read"
