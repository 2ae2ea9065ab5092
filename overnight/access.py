"""Who may read which repository: checked where a task is filed (the API) and again on the worker before
anything is cloned.

- A local path is for admins only, and only under ``OVERNIGHT_LOCAL_REPO_ROOTS``; the server's own folders
  (data dir with its mirrors, workspaces and environments; the config dir) never, however the path gets
  there: symlinks are resolved first, and the git directory the path names (``.git`` file, ``commondir``,
  ``objects/info/alternates``, symlinks inside it) must stay out of them too.
- The worker's credentials (``OVERNIGHT_GIT_CREDENTIALS``, its SSH keys and agent, its git credential
  helpers) serve only the users ``OVERNIGHT_REPO_ACCESS`` maps to a repository (admins: every repository). A
  repository a pattern matches is refused to everyone else; one no pattern matches is cloned anonymously.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from overnight.repourl import SCP_LIKE

if TYPE_CHECKING:
    from overnight.settings import Settings

Use = Literal["credentials", "anonymous"]
GIT_DIR_WALK_LIMIT = 200_000
"""Entries of a local repository's git directory looked at for symlinks before giving up (refused)."""


class AccessDenied(Exception):
    """This user may not have this repository cloned; the message says why (it names no secret)."""


@dataclass(frozen=True, kw_only=True)
class Requester:
    """Whose task names the repository."""

    name: str
    is_admin: bool


@dataclass(frozen=True, kw_only=True)
class RepoAccess:
    allow_local: bool = False
    local_roots: tuple[Path, ...] = ()
    """Folders local repositories must be under (resolved)."""
    forbidden: tuple[Path, ...] = ()
    """The server's own folders (resolved): nothing in them is ever a task's repository."""
    mapping: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Repository pattern → user names that may use the worker's credentials for it ("*": every user)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> RepoAccess:
        forbidden = [settings.data_dir, settings.config_dir, settings.mirrors_dir, settings.workspaces_dir,
                     settings.environments_dir]  # fmt: skip
        if settings.sandbox.rootfs is not None:
            forbidden.append(settings.sandbox.rootfs)
        return cls(
            allow_local=settings.allow_local_repos,
            local_roots=tuple(_resolve(root) for root in settings.local_repo_roots),
            forbidden=tuple(dict.fromkeys(_resolve(path) for path in forbidden)),
            mapping={pattern: tuple(users) for pattern, users in settings.repo_access.items()},
        )

    def check_local(self, path: str, requester: Requester | None) -> Path:
        """The resolved path of a local repository ``requester`` may name; ``AccessDenied`` otherwise."""
        if not self.allow_local:
            raise AccessDenied("local repository paths are not allowed on this server")
        if requester is None or not requester.is_admin:
            raise AccessDenied("local repository paths are for admins only")
        return self.check_local_path(path)

    def check_local_path(self, path: str) -> Path:
        """The resolved path, if it is under a root and neither is nor uses a folder of the server's own."""
        if not self.allow_local:
            raise AccessDenied("local repository paths are not allowed on this server")
        resolved = _resolve(Path(path))
        if not any(resolved.is_relative_to(root) for root in self.local_roots):
            roots = ", ".join(str(root) for root in self.local_roots) or "none are configured"
            raise AccessDenied(f"{path} is not under a folder of OVERNIGHT_LOCAL_REPO_ROOTS ({roots})")
        for place in (resolved, *_git_places(resolved)):
            if inside := self._forbidden_holding(place):
                raise AccessDenied(f"{path} is (or uses) {inside}, a folder of the server's own")
        return resolved

    def check_remote(self, url: str, requester: Requester | None) -> Use:
        """Whether the worker's credentials may be used for ``url`` in ``requester``'s task; ``AccessDenied``
        when an operator mapped the repository to other users."""
        normal = normalise(url)
        matching = [names for pattern, names in self.mapping.items() if fnmatch.fnmatchcase(normal, normalise(pattern))]
        users = {user for names in matching for user in names}
        if requester is not None and (requester.is_admin or "*" in users or requester.name in users):
            return "credentials"
        if matching:
            who = requester.name if requester is not None else "a task without a user"
            raise AccessDenied(f"{who} may not use repository {url}: OVERNIGHT_REPO_ACCESS does not list them for it")
        return "anonymous"

    def check(self, repo: str, requester: Requester | None) -> None:
        """``AccessDenied`` unless ``requester`` may name ``repo`` (a validated address or local path)."""
        if repo.startswith("/"):
            self.check_local(repo, requester)
        else:
            self.check_remote(repo, requester)

    def _forbidden_holding(self, place: Path) -> Path | None:
        return next((folder for folder in self.forbidden if place.is_relative_to(folder)), None)


def normalise(url: str) -> str:
    """One spelling per repository address for matching: ``git@host:path`` as ``ssh://git@host/path``,
    lower-case (GitHub's and GitLab's paths are case-insensitive; matching more only refuses more), no
    trailing ``/`` or ``.git``."""
    if match := SCP_LIKE.match(url):
        url = f"ssh://{match['user']}@{match['host']}/{match['path']}"
    parts = urlsplit(url.lower())
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/').removesuffix('.git')}"


def _resolve(path: Path) -> Path:
    return Path(os.path.realpath(path.expanduser()))


def _git_places(worktree: Path) -> Iterator[Path]:
    """Every place the repository at ``worktree`` reads objects from, resolved."""
    dot_git = worktree / ".git"
    if dot_git.is_file():
        git_dir = _pointer(dot_git, worktree, prefix="gitdir:")
    elif dot_git.is_dir():
        git_dir = _resolve(dot_git)
    elif (worktree / "HEAD").is_file() and (worktree / "objects").exists():
        git_dir = worktree  # bare
    else:
        return  # not a repository: git says so when it tries
    yield git_dir
    common = _pointer(git_dir / "commondir", git_dir) if (git_dir / "commondir").is_file() else git_dir
    yield common
    for base in dict.fromkeys((git_dir, common)):
        objects = _resolve(base / "objects")
        yield objects
        alternates = objects / "info" / "alternates"
        if alternates.is_file():
            for line in _lines(alternates):
                yield _resolve(objects / line)
        yield from _symlink_targets(base)


def _pointer(file: Path, relative_to: Path, *, prefix: str = "") -> Path:
    lines = _lines(file)
    target = lines[0].removeprefix(prefix).strip() if lines else ""
    return _resolve(relative_to / target)


def _lines(file: Path) -> list[str]:
    try:
        text = file.read_text(errors="replace")[:65536]
    except OSError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _symlink_targets(git_dir: Path) -> Iterable[Path]:
    seen = 0
    for folder, dirs, files in os.walk(git_dir, followlinks=False):
        for name in (*dirs, *files):
            seen += 1
            if seen > GIT_DIR_WALK_LIMIT:
                raise AccessDenied(f"{git_dir} has more than {GIT_DIR_WALK_LIMIT} entries to check")
            entry = Path(folder) / name
            if entry.is_symlink():
                yield _resolve(entry)
