"""A bare-mirror cache per repository on each worker: fetch instead of clone, one lock per repository,
pruned by total size (least recently used first, never one a task is using).

The mirrors are the worker's pristine copies: no sandbox ever sees them, so the patch is checked against
them, and a commit-and-format-patch of the result is made from them. Credentials for private repositories
(``OVERNIGHT_GIT_CREDENTIALS``: host or host:port → token) reach git as an HTTP header through environment variables
only — never in a URL, a remote, a config file, an event or a log line.
"""

from __future__ import annotations

import base64
import contextlib
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


def git_env(
    *,
    allow_local: bool,
    credentials: dict[str, str] | None = None,
    url: str | None = None,
    worker_identity: bool = False,
) -> dict[str, str]:
    """The environment every git command of the worker runs with (credentials only for ``url``'s host and port,
    keyed ``host`` or ``host:port`` as ``credential_origin`` gives them).

    A command that reaches ``url`` gets the worker's own identity (its SSH keys and agent, its git
    configuration with credential helpers, its ``~/.netrc``) only with ``worker_identity``: for the users an
    operator mapped to the repository (``overnight.access``). Otherwise git may send nothing but the token
    header set here."""
    env = dict(os.environ)
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GIT_ALLOW_PROTOCOL="https:ssh" + (":file" if allow_local else ""),
        GIT_SSH_COMMAND="ssh -o BatchMode=yes",
        GIT_CONFIG_NOSYSTEM="1",
    )
    anonymous = url is not None and not worker_identity
    if anonymous:
        _forget_worker_identity(env)
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
    if anonymous:
        _add_config(env, "credential.helper", "")  # an empty value empties the list of helpers
    return env


NO_HOME = "/nonexistent/overnight-git-home"
"""HOME for git without the worker's identity: no ``~/.gitconfig``, ``~/.git-credentials`` or ``~/.netrc``
(curl reads it for every host git talks to)."""
ANONYMOUS_SSH = (
    "ssh -F /dev/null -o BatchMode=yes -o PubkeyAuthentication=no -o IdentitiesOnly=yes -o IdentityFile=/dev/null"
    " -o IdentityAgent=none -o GSSAPIAuthentication=no -o ControlPath=none"
)
"""ssh offering no key, no agent, no Kerberos ticket and no shared connection (``-F /dev/null``: no
``~/.ssh/config`` or system config adding any)."""
_IDENTITY_VARIABLES = ("SSH_AUTH_SOCK", "GIT_ASKPASS", "SSH_ASKPASS", "GIT_SSH", "XDG_CONFIG_HOME",
                       "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT", "GIT_SSL_CERT", "GIT_SSL_KEY")  # fmt: skip


def _forget_worker_identity(env: dict[str, str]) -> None:
    for name in [*env]:
        if name in _IDENTITY_VARIABLES or name.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_")):
            del env[name]
    env.update(HOME=NO_HOME, GIT_CONFIG_GLOBAL=os.devnull, GIT_SSH_COMMAND=ANONYMOUS_SSH)


def _add_config(env: dict[str, str], key: str, value: str) -> None:
    index = int(env.get("GIT_CONFIG_COUNT", "0"))
    env.update({f"GIT_CONFIG_KEY_{index}": key, f"GIT_CONFIG_VALUE_{index}": value,
                "GIT_CONFIG_COUNT": str(index + 1)})  # fmt: skip


def mirror_key(url: str, identity: str) -> str:
    """What a mirror is kept under: the address and whose credentials fetched it (``anonymous``, ``worker``,
    ``github``, ``local``), so that a task never reads a mirror that credentials it may not use filled."""
    return f"{identity} {url}"


class MirrorCache:
    def __init__(self, root: Path, *, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def path_for(self, url: str) -> Path:
        """Where the mirror for ``url`` is; tasks name it by ``mirror_key`` (address and credentials used)."""
        return self.root / (hashlib.sha256(url.encode()).hexdigest()[:24] + ".git")

    @contextmanager
    def in_use(self, url: str) -> Iterator[Path]:
        """The mirror of ``url``, kept from pruning while the block runs: a shared lock on ``NAME.use`` that
        any number of tasks hold at once (from before their fetch until their result is published), and that
        :meth:`prune` must get exclusively to remove the mirror."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path_for(url)
        with open(path.with_suffix(".use"), "a") as lease:
            fcntl.flock(lease, fcntl.LOCK_SH)
            yield path  # closing the file releases the lock

    @contextmanager
    def locked(self, url: str) -> Iterator[Path]:
        """The mirror of ``url``, locked against other tasks of this host while the block runs (a fetch)."""
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
        """Remove the least recently used mirrors until the rest fit in ``max_bytes``; a mirror a task is
        using (:meth:`in_use`) stays."""
        # Another worker process may be pruning too: a mirror that vanishes meanwhile counts as nothing.
        mirrors = sorted((p for p in self.root.glob("*.git") if p != keep), key=_mtime)
        sizes = {p: _size(p) for p in [*mirrors, keep]}
        total = sum(sizes.values())
        removed = []
        for path in mirrors:
            if total <= self.max_bytes:
                break
            with open(path.with_suffix(".use"), "a") as lease:
                try:
                    fcntl.flock(lease, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a task is using it
                shutil.rmtree(path, ignore_errors=True)
            total -= sizes[path]
            removed.append(path)
        return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _size(path: Path) -> int:
    total = 0
    for entry in path.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            total += entry.lstat().st_blocks * 512
    return total
