"""Fetching an image from an address someone else chose, without being turned against our own network.

Every hop (the address given, then each redirect, at most :data:`MAX_REDIRECTS`) is checked before it is
connected to: http(s) only, no credentials in it, an address the caller allows (GitHub's own hosts for an
issue's images), and every address its name resolves to public — loopback, private, link-local (cloud
metadata), multicast and reserved addresses are refused unless they fall in a network the operator allowed
(``OVERNIGHT_IMAGES_FETCH_ALLOWED_NETWORKS``). The connection then goes to the address that was checked (the
name is not resolved a second time, so it cannot be rebound in between), with TLS still verified against the
name. The whole fetch has one deadline and reads at most one byte past the size limit.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from overnight.images import MAX_PIXELS, ImageRefused, ImageSource, TaskImageData, checked_image, too_large

MAX_REDIRECTS = 5
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, kw_only=True)
class FetchPolicy:
    max_bytes: int
    timeout: float
    max_pixels: int = MAX_PIXELS
    allowed_networks: Sequence[Network] = ()
    url_allowed: Callable[[httpx.URL], bool] = field(default=lambda url: True)
    """Whether a hop may go to this address at all (GitHub's image hosts for an issue's images)."""
    headers: Callable[[httpx.URL], dict[str, str]] = field(default=lambda url: {})
    """Extra headers for a hop (a token for GitHub's own hosts); asked again at every hop."""


_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to: mapped, NAT64 (RFC 6052/8215), 6to4, IPv4-compatible."""
    if address.ipv4_mapped is not None or address.sixtofour is not None:
        return address.ipv4_mapped or address.sixtofour
    if any(address in network for network in (*_NAT64, _IPV4_COMPATIBLE)):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refused_address(address: Address, allowed: Sequence[Network]) -> bool:
    """True for an address an image fetch must not reach: anything not globally routable, unless allowed. An IPv6
    address that leads to an IPv4 one (mapped, NAT64, 6to4, IPv4-compatible) is refused when that one is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address.is_site_local or (embedded is not None and refused_address(embedded, allowed)):
            return True
    if any(address in network for network in allowed):
        return False
    return not address.is_global or address.is_multicast


def _checked_hop(url: httpx.URL, policy: FetchPolicy) -> Address:
    """The address to connect to for ``url``, after every rule; raises ImageRefused naming the rule."""
    if url.scheme not in ("http", "https"):
        raise ImageRefused("image_url_refused", f"image address {url} is refused: only http(s) addresses are fetched")
    if url.userinfo:
        raise ImageRefused("image_url_refused", "image addresses may not carry credentials")
    host = url.host.lower()
    if not host or not policy.url_allowed(url):
        raise ImageRefused("image_url_refused", f"image address {url} is refused: not one of the hosts allowed here")
    try:
        found = socket.getaddrinfo(host, url.port or (443 if url.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ImageRefused("image_fetch_failed", f"image address {url}: host {host!r} does not resolve") from exc
    addresses = [ipaddress.ip_address(str(entry[4][0]).split("%")[0]) for entry in found]
    for address in addresses:
        if refused_address(address, policy.allowed_networks):
            raise ImageRefused(
                "image_url_refused",
                f"image address {url} is refused: {host} resolves to {address}, which is not a public address "
                "(OVERNIGHT_IMAGES_FETCH_ALLOWED_NETWORKS allows networks)",
            )
    return addresses[0]


def fetch_image(url: str, policy: FetchPolicy, *, what: str, source: ImageSource) -> TaskImageData:
    """The image at ``url`` (following at most MAX_REDIRECTS redirects, each hop checked), or ImageRefused."""
    deadline = time.monotonic() + policy.timeout
    try:
        current = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ImageRefused("image_url_refused", f"{what}: {url!r} is not a usable address") from exc
    with httpx.Client(follow_redirects=False, trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            address = _checked_hop(current, policy)
            data, location = _get(client, current, address, policy, deadline, what)
            if location is None:
                return checked_image(
                    data, max_bytes=policy.max_bytes, max_pixels=policy.max_pixels, what=what, source=source, url=url
                )
            try:
                current = current.join(location)
            except httpx.InvalidURL as exc:
                raise ImageRefused("image_fetch_failed", f"{what}: a redirect to an unusable address") from exc
    raise ImageRefused("image_fetch_failed", f"{what}: more than {MAX_REDIRECTS} redirects")


def _get(
    client: httpx.Client, url: httpx.URL, address: Address, policy: FetchPolicy, deadline: float, what: str
) -> tuple[bytes, str | None]:
    """One hop to the checked ``address``: the body (at most max_bytes), or the redirect's Location."""
    host = f"[{address}]" if address.version == 6 else str(address)
    pinned = url.copy_with(host=host)
    headers = {"Host": url.netloc.decode("ascii"), "Accept": "image/*", **policy.headers(url)}
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ImageRefused("image_fetch_failed", f"{what}: took longer than {policy.timeout:g} s")
    request = client.build_request("GET", pinned, headers=headers, timeout=httpx.Timeout(remaining),
                                   extensions={"sni_hostname": url.host})  # fmt: skip
    try:
        response = client.send(request, stream=True)
        try:
            if response.is_redirect and "location" in response.headers:
                return b"", response.headers["location"]
            if response.status_code != 200:
                raise ImageRefused("image_fetch_failed", f"{what}: {url} answered HTTP {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > policy.max_bytes:
                raise too_large(what, policy.max_bytes)
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > policy.max_bytes:
                    raise too_large(what, policy.max_bytes)
                if time.monotonic() > deadline:
                    raise ImageRefused("image_fetch_failed", f"{what}: took longer than {policy.timeout:g} s")
            return bytes(body), None
        finally:
            response.close()
    except httpx.TimeoutException as exc:
        raise ImageRefused("image_fetch_failed", f"{what}: took longer than {policy.timeout:g} s") from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL: a Location httpx cannot build
        raise ImageRefused("image_fetch_failed", f"{what}: {url} could not be fetched ({type(exc).__name__})") from exc
