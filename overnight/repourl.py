"""Which repository addresses and refs a task may name, checked before git ever sees them."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

MAX_URL_LENGTH = 2048
MAX_REF_LENGTH = 255
SCP_LIKE = re.compile(r"^(?P<user>[A-Za-z0-9._-]+)@(?P<host>[A-Za-z0-9.-]+):(?P<path>[^:\\]+)$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:\d{1,5})?$")
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


class InvalidRepoError(ValueError):
    """The repository address or ref is not one Overnight accepts; the message says why."""


def validate_repo_url(value: str, *, allow_local: bool) -> str:
    """Return the accepted address (stripped) or raise ``InvalidRepoError``.

    Accepted: ``https://host/path``, ``ssh://[user@]host/path``, scp-like ``git@host:path`` and, when
    ``allow_local`` is on, absolute local paths. Refused before git runs: ``file://``, ``ext::`` and
    other ``transport::`` forms, option-like values (``--upload-pack=...``), credentials in the URL,
    whitespace and control characters.
    """
    url = value.strip()
    if not url:
        raise InvalidRepoError("repository is empty")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidRepoError(f"repository address is longer than {MAX_URL_LENGTH} characters")
    if url.startswith("-"):
        raise InvalidRepoError("repository must not start with '-' (it would be read as a git option)")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise InvalidRepoError("repository must not contain whitespace or control characters")
    if "::" in url.split("/", 1)[0] or url.lower().startswith("ext::"):
        raise InvalidRepoError("git transport helpers ('transport::address', e.g. ext::) are not allowed")
    lowered = url.lower()
    if lowered.startswith("file:"):
        raise InvalidRepoError("file:// URLs are not allowed; give an absolute path (local repositories only)")
    if lowered.startswith(("https://", "ssh://")):
        return _check_url(url)
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise InvalidRepoError(f"unsupported scheme {scheme!r}: use https://, ssh:// or git@host:path")
    if match := SCP_LIKE.match(url):
        _check_path(match.group("path"))
        return url
    if url.startswith("/"):
        if not allow_local:
            raise InvalidRepoError("local repository paths are not allowed on this server (use https:// or ssh)")
        if ".." in PurePosixPath(url).parts:
            raise InvalidRepoError("local repository path must not contain '..'")
        return url
    raise InvalidRepoError(
        "repository must be an https:// or ssh URL, git@host:path"
        + (", or an absolute local path" if allow_local else "")
    )


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is not None or (parts.scheme == "https" and parts.username is not None):
        raise InvalidRepoError("credentials in the repository URL are not allowed; configure them on the server")
    host = parts.hostname or ""
    netloc_host = parts.netloc.rsplit("@", 1)[-1]
    if not host or not _HOST.match(netloc_host):
        raise InvalidRepoError(f"repository URL has no valid host: {url!r}")
    if not parts.path.strip("/"):
        raise InvalidRepoError("repository URL has no path")
    if parts.query or parts.fragment:
        raise InvalidRepoError("repository URL must not have a query or fragment")
    _check_path(parts.path)
    return url


def _check_path(path: str) -> None:
    """No '.' or '..' segment and no empty one, plain or percent-encoded: git's HTTP client resolves them
    before it asks the server, so ``/mine/../theirs`` would be matched against access rules as ``mine`` and
    fetched as ``theirs``."""
    segments = unquote(path).strip("/").split("/")
    if any(segment in (".", "..") for segment in segments):
        raise InvalidRepoError("repository address must not contain '.' or '..' path segments")
    if "" in segments:
        raise InvalidRepoError("repository address must not contain empty path segments ('//')")


def validate_ref(value: str) -> str:
    """A branch, tag or commit name safe to hand to git (``git check-ref-format`` rules, roughly)."""
    ref = value.strip()
    if not ref:
        raise InvalidRepoError("ref is empty")
    if len(ref) > MAX_REF_LENGTH:
        raise InvalidRepoError(f"ref is longer than {MAX_REF_LENGTH} characters")
    if ref.startswith("-"):
        raise InvalidRepoError("ref must not start with '-'")
    if _REF_FORBIDDEN.search(ref) or ".." in ref or "@{" in ref or ref.endswith((".", "/", ".lock")):
        raise InvalidRepoError(f"ref {ref!r} is not a valid git ref name")
    if ref.startswith("/") or "//" in ref:
        raise InvalidRepoError(f"ref {ref!r} is not a valid git ref name")
    return ref
