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


def _raw_path_allowed(path: str, repo: str | None, *, prefixed: bool) -> bool:
    """A raw file's path names its repository (``/OWNER/NAME/raw/...``, or ``/raw/OWNER/NAME/...`` when
    ``prefixed``): with ``repo`` given, only that repository's, since the token reads every repository of the
    installation and raw addresses can be guessed (an issue must not make the worker read another one)."""
    if repo is None:
        return True
    owner_name = "/" + repo.strip("/").lower() + "/"
    lowered = path.lower()
    return lowered.startswith("/raw" + owner_name) if prefixed else lowered.startswith(owner_name)


def image_url_allowed(api_url: str, repo: str | None = None) -> Callable[[httpx.URL], bool]:
    """Whether an address (the first, or a redirect's) is one of GitHub's image hosts, over the right scheme;
    with ``repo`` (OWNER/NAME), raw files only of that repository."""
    server = _server(api_url.rstrip("/"))

    def allowed(url: httpx.URL) -> bool:
        host = url.host.lower()
        netloc = f"{host}:{url.port}" if url.port else host
        if server is not None and netloc == server[1]:
            if url.scheme != server[0]:
                return False
            if url.path.startswith(("/user-attachments/", "/assets/", "/storage/")):
                return True
            return _raw_path_allowed(url.path, repo, prefixed=url.path.startswith("/raw/"))
        if url.scheme != "https" or url.port not in (None, 443):
            return False
        if host == "github.com":
            if url.path.startswith(("/user-attachments/", "/assets/")):
                return True
            return "/raw/" in url.path and _raw_path_allowed(url.path, repo, prefixed=False)
        if host == "raw.githubusercontent.com":
            return _raw_path_allowed(url.path, repo, prefixed=False)
        return host.endswith(GITHUB_CONTENT_DOMAIN)

    return allowed


def token_wanted(api_url: str) -> Callable[[httpx.URL], bool]:
    """Whether a hop is sent the installation token: github.com, raw.githubusercontent.com and the configured
    server need it for private repositories; GitHub's other content hosts (signed addresses, avatars, the image
    proxy) do not, and never get it."""
    server = _server(api_url.rstrip("/"))

    def wanted(url: httpx.URL) -> bool:
        host = url.host.lower()
        netloc = f"{host}:{url.port}" if url.port else host
        if server is not None:
            return netloc == server[1]
        return host in ("github.com", "raw.githubusercontent.com")

    return wanted


def issue_image_urls(api_url: str, *texts: str | None, limit: int, repo: str | None = None) -> list[str]:
    """The first ``limit`` images of ``texts`` that may be fetched (others are not GitHub's, or are raw files of
    another repository than ``repo``: left out)."""
    allowed = image_url_allowed(api_url, repo)
    kept = []
    for url in image_urls(*texts):
        try:
            ok = allowed(httpx.URL(url))
        except (httpx.InvalidURL, TypeError):
            ok = False
        if ok:
            kept.append(url)
    return kept[:limit]
