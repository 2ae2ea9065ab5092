"""A bare-mirror cache per repository on each worker: fetch instead of clone, one lock per repository,
pruned by total size (least recently used first).

The mirrors are the worker's pristine copies: no sandbox ever sees them, so the patch is checked against
them, and a commit-and-format-patch of the result is made from them. Credentials for private repositories
(``OVERNIGHT_GIT_CREDENTIALS``: host or host:port → token) reach git as an HTTP header through environment variables
only — never in a URL, a remote, a config file, an event or a log line.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import git


def credential_host(key: str) -> str:
    """A credentials key (``host`` or ``host:port``) as lookups compare it: lower case, 443 left out."""
    return key.strip().lower().removesuffix(":443")


def credential_origin(url: str | None) -> str | None:
    """``host``, or ``host:port`` for a port other than 443, of an https:// URL (None for any other URL): the
    part of git's ``http.<url>.*`` match that matters. Git compares the port exactly, an absent one meaning 443,
    so a key without the port never reaches a server on another port (GitHub Enterprise on :8443)."""
    if not url:
        return None
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() != "https" or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return credential_host(f"{host}:{port}" if port else host)


def git_env(*, allow_local: bool, credentials: dict[str, str] | None = None, url: str | None = None) -> dict[str, str]:
    """The environment every git command of the worker runs with (credentials only for ``url``'s host and port,
    keyed ``host`` or ``host:port`` as ``credential_origin`` gives them)."""
    env = dict(os.environ)
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GIT_ALLOW_PROTOCOL="https:ssh" + (":file" if allow_local else ""),
        GIT_SSH_COMMAND="ssh -o BatchMode=yes",
        GIT_CONFIG_NOSYSTEM="1",
    )
    origin = credential_origin(url)
    tokens = {credential_host(key): value for key, value in (credentials or {}).items()}
    token = tokens.get(origin) if origin else None
    if origin and token:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        env.update(
            GIT_CONFIG_COUNT="1",
            GIT_CONFIG_KEY_0=f"http.https://{origin}/.extraheader",
            GIT_CONFIG_VALUE_0=f"AUTHORIZATION: basic {basic}",
        )
    return env


class MirrorCache:
    def __init__(self, root: Path, *, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def path_for(self, url: str) -> Path:
        return self.root / (hashlib.sha256(url.encode()).hexdigest()[:24] + ".git")

    @contextmanager
    def locked(self, url: str) -> Iterator[Path]:
        """The mirror of ``url``, locked against other tasks of this host while the block runs."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path_for(url)
        with open(path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield path
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def update(self, url: str, path: Path, env: dict[str, str]) -> git.Repo:
        """Fetch into the mirror (cloning it the first time); the caller holds the lock."""
        if (path / "HEAD").exists():
            mirror = git.Repo(path)
            mirror.git.fetch("--prune", "--no-recurse-submodules", "origin", "+refs/*:refs/*", env=env)
        else:
            shutil.rmtree(path, ignore_errors=True)
            mirror = git.Repo.clone_from(url, path, env=env, mirror=True, multi_options=["--no-recurse-submodules"])
        os.utime(path)
        return mirror

    def prune(self, keep: Path) -> list[Path]:
        """Remove the least recently used mirrors until the rest fit in ``max_bytes``."""
        mirrors = sorted((p for p in self.root.glob("*.git") if p != keep), key=lambda p: p.stat().st_mtime)
        sizes = {p: _size(p) for p in [*mirrors, keep] if p.exists()}
        total = sum(sizes.values())
        removed = []
        for path in mirrors:
            if total <= self.max_bytes:
                break
            with open(path.with_suffix(".lock"), "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # in use by another task
                shutil.rmtree(path, ignore_errors=True)
                fcntl.flock(lock, fcntl.LOCK_UN)
            total -= sizes[path]
            removed.append(path)
        return removed


def _size(path: Path) -> int:
    return sum(entry.lstat().st_blocks * 512 for entry in path.rglob("*"))
