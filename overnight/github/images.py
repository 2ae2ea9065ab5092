"""Images in a GitHub issue or comment: where they are (Markdown ``![alt](url)`` and HTML ``<img src>``), and
which of them may be fetched — only from GitHub's own hosts (github.com's attachments, *.githubusercontent.com,
and the configured GitHub Enterprise Server), over https (or the scheme the configured server itself uses).

The webhook notes the addresses with the task; the worker fetches them with the installation token (images of
private repositories need it), which goes to these hosts only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

_MARKDOWN = re.compile(r"!\[[^\]\n]*\]\(\s*<?([^\s)>]+)")
_HTML = re.compile(r"<img\b[^>]*?\bsrc\s*=\s*[\"']([^\"'>\s]+)[\"']", re.IGNORECASE)
GITHUB_HOSTS = ("github.com",)
GITHUB_CONTENT_DOMAIN = ".githubusercontent.com"


def image_urls(*texts: str | None) -> list[str]:
    """The image addresses in ``texts`` (Markdown and HTML), in order, each once."""
    found: list[tuple[int, int, str]] = []
    for number, text in enumerate(texts):
        for pattern in (_MARKDOWN, _HTML):
            found += [(number, match.start(), match.group(1)) for match in pattern.finditer(text or "")]
    urls: list[str] = []
    for _, _, url in sorted(found):
        url = url.replace("&amp;", "&")
        if url not in urls:
            urls.append(url)
    return urls


def _server(api_url: str) -> tuple[str, str] | None:
    """(scheme, host[:port]) of a configured GitHub Enterprise Server, None for github.com."""
    if api_url == "https://api.github.com":
        return None
    parts = urlsplit(api_url)
    return parts.scheme, parts.netloc.lower()


def image_url_allowed(api_url: str) -> Callable[[httpx.URL], bool]:
    """Whether an address (the first, or a redirect's) is one of GitHub's image hosts, over the right scheme."""
    server = _server(api_url.rstrip("/"))

    def allowed(url: httpx.URL) -> bool:
        host = url.host.lower()
        netloc = f"{host}:{url.port}" if url.port else host
        if server is not None and netloc == server[1]:
            return url.scheme == server[0]
        if url.scheme != "https" or url.port not in (None, 443):
            return False
        if host == "github.com":
            return url.path.startswith(("/user-attachments/", "/assets/")) or "/raw/" in url.path
        return host.endswith(GITHUB_CONTENT_DOMAIN)

    return allowed


def issue_image_urls(api_url: str, *texts: str | None, limit: int) -> list[str]:
    """The first ``limit`` images of ``texts`` that may be fetched (others are not GitHub's: left out)."""
    allowed = image_url_allowed(api_url)
    kept = []
    for url in image_urls(*texts):
        try:
            ok = allowed(httpx.URL(url))
        except (httpx.InvalidURL, TypeError):
            ok = False
        if ok:
            kept.append(url)
    return kept[:limit]
