"""Checking out a task's repository on the worker, before any untrusted code runs, and the git work on the
pristine mirror afterwards: the one commit of the patch (which checks that it applies), its mbox, and what the
GitHub push sends."""

from __future__ import annotations

import logging
import shutil
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import git
from sqlalchemy.orm import Session

from overnight.access import AccessDenied, RepoAccess, Requester
from overnight.repourl import InvalidRepoError, validate_ref, validate_repo_url
from store.models import User
from worker.errors import GitMemoryError, TaskFailure
from worker.hostgit import DEFAULT_GIT_MEMORY, bounded_git
from worker.mirrors import MirrorCache, git_env, mirror_key

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Checkout:
    mirrors: MirrorCache
    access: RepoAccess
    """Local roots, the server's own folders, and which users may use ``credentials`` for which repository."""
    credentials: dict[str, str] = field(default_factory=dict)
    """OVERNIGHT_GIT_CREDENTIALS ({host or host:port: token}), for the users ``access`` allows."""

    @property
    def allow_local(self) -> bool:
        return self.access.allow_local


@dataclass(frozen=True, kw_only=True)
class Source:
    """Where a task's repository is fetched from, and as whom."""

    url: str
    identity: str
    """Whose credentials fetch it (the mirror is kept apart per identity): anonymous, worker, github or local."""
    tokens: dict[str, str]
    worker_identity: bool = False
    """May git use the worker's SSH keys and agent, credential helpers and git configuration."""


def repository_source(
    url: str, owner: Requester | None, checkout: Checkout, task_credentials: dict[str, str]
) -> Source:
    """Check that ``owner``'s task may read ``url`` (a validated address) and say with which credentials: a GitHub
    task's own token, the worker's for the users OVERNIGHT_REPO_ACCESS maps to the repository, else none."""
    try:
        if url.startswith("/"):  # admins only: the API checked; what the path resolves to is checked here, now
            return Source(url=str(checkout.access.check_local_path(url)), identity="local", tokens={})
        if task_credentials:
            return Source(url=url, identity="github", tokens=task_credentials)
        if checkout.access.check_remote(url, owner) == "credentials":
            return Source(url=url, identity="worker", tokens=checkout.credentials, worker_identity=True)
    except AccessDenied as exc:
        raise TaskFailure(f"repository refused: {exc}") from exc
    return Source(url=url, identity="anonymous", tokens={})


def task_owner(session: Session, user_id: int | None) -> Requester | None:
    """Whose task it is, for ``repository_source`` (None: a task without a user may use no credentials)."""
    user = session.get(User, user_id) if user_id is not None else None
    return Requester(name=user.name, is_admin=user.is_admin) if user is not None else None


def clone_repository(
    repo: str,
    ref: str | None,
    dest: Path,
    *,
    checkout: Checkout,
    owner: Requester | None = None,
    credentials: dict[str, str] | None = None,
    lease: ExitStack | None = None,
) -> tuple[str, Path]:
    """Check ``repo`` out at ``ref`` (default branch when None) into ``dest``; return the base commit sha and
    the repository's mirror (the pristine copy no sandbox sees). ``owner`` is whose task it is (what it may
    read: ``repository_source``); ``credentials`` are {host: token} of this task's own (a GitHub
    installation's). The workspace is a full copy of the
    mirror's objects (no hardlinks, no alternates) with no remote left in it. With ``lease``, the mirror is
    kept from pruning until that stack closes (the task reads it again for its patch)."""
    try:
        url = validate_repo_url(repo, allow_local=checkout.allow_local)
        ref = validate_ref(ref) if ref else None
    except InvalidRepoError as exc:
        raise TaskFailure(f"bad repository: {exc}") from exc
    if url.startswith("/") and not Path(url).exists():
        raise TaskFailure(f"clone failed: {url} does not exist")
    source = repository_source(url, owner, checkout, credentials or {})
    if dest.exists() and any(dest.iterdir()):  # an empty one stays: it may be the workspace's own disk
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    env = git_env(allow_local=checkout.allow_local, credentials=source.tokens, url=source.url,
                  worker_identity=source.worker_identity)  # fmt: skip
    key = mirror_key(source.url, source.identity)
    with ExitStack() as local:
        path = (lease or local).enter_context(checkout.mirrors.in_use(key))
        sha = _fetch_and_check_out(checkout.mirrors, source.url, key, path, env, ref, dest)
    try:
        checkout.mirrors.prune(keep=path)
    except OSError:  # the cache stays a little over its size; the task goes on
        log.exception("could not prune the mirrors")
    return sha, path


def _fetch_and_check_out(
    mirrors: MirrorCache, url: str, key: str, path: Path, env: dict[str, str], ref: str | None, dest: Path
) -> str:
    with mirrors.locked(key):
        try:
            mirror = mirrors.update(url, path, env)
        except git.GitCommandError as exc:
            raise TaskFailure(f"clone failed: {_stderr_line(exc)}") from exc
        sha = _resolve(mirror, ref)
        try:
            clone = git.Repo.clone_from(
                str(path), dest, env=git_env(allow_local=True), no_checkout=True, multi_options=["--no-hardlinks"]
            )
            clone.git.checkout("-q", "-B", "overnight", sha)
            clone.git.remote("remove", "origin")
        except git.GitCommandError as exc:
            raise TaskFailure(f"checkout of {ref or 'the default branch'} failed: {_stderr_line(exc)}") from exc
    return sha


def apply_to_workspace(
    workspace: Path, diff: str, *, what: str = "the previous task's patch", memory: int = DEFAULT_GIT_MEMORY
) -> None:
    """Start a task from uploaded local changes or a follow-up from its parent's patch (before any untrusted
    code ran in the workspace), with git's memory bounded: the diff is the user's or a model's."""
    if not diff:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".diff") as patch_file:
        patch_file.write(diff)
        patch_file.flush()
        try:
            bounded_git(workspace, "apply", "--whitespace=nowarn", patch_file.name, env=git_env(allow_local=False),
                        memory=memory)  # fmt: skip
        except GitMemoryError as exc:
            raise TaskFailure(f"{what} could not be applied: {exc}") from exc
        except git.GitCommandError as exc:
            raise TaskFailure(f"{what} does not apply: {_stderr_line(exc)}") from exc


@dataclass(kw_only=True, frozen=True)
class Commit:
    """The one commit of a task's patch: its mbox is formatted from it and the GitHub push sends it."""

    mirror: Path
    """The pristine mirror of the repository (where the push finds the remote's address)."""
    repository: Path
    """A bare repository of the task's own that borrows the mirror's objects and holds the commit's."""
    sha: str
    diffstat: str
    mbox: str


def commit_patch(
    mirror: Path, base_sha: str, diff: str, message: str, *, into: Path, author: str, email: str,
    memory: int = DEFAULT_GIT_MEMORY,
) -> Commit | None:  # fmt: skip
    """``diff`` as one commit on ``base_sha`` with ``message`` (None for an empty diff), made once, with git's
    memory bounded at every step that reads the patch (it was made in a sandbox): applied to a clean index of the
    base commit (which is the check that it applies to the pristine mirror), written as a tree and committed;
    then its diffstat and ``git format-patch`` mbox. The commit's objects go to ``into``, a bare repository that
    borrows the mirror's objects: the mirror, which later tasks of other users clone, never holds them."""
    if not diff:
        return None
    _borrowing_repository(into, mirror)
    with tempfile.TemporaryDirectory(prefix="overnight-commit-") as tmp:
        env = {
            **git_env(allow_local=False), "GIT_INDEX_FILE": str(Path(tmp) / "index"),
            "GIT_AUTHOR_NAME": author, "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": author, "GIT_COMMITTER_EMAIL": email,
        }  # fmt: skip
        patch_file, message_file = Path(tmp) / "task.diff", Path(tmp) / "message"
        patch_file.write_text(diff)
        message_file.write_text(message)
        try:
            bounded_git(into, "read-tree", base_sha, env=env, memory=memory)
            bounded_git(into, "apply", "--cached", str(patch_file), env=env, memory=memory)
        except GitMemoryError as exc:
            raise TaskFailure(f"the patch could not be checked: {exc}") from exc
        except git.GitCommandError as exc:
            raise TaskFailure(f"the patch does not apply to the base commit: {_stderr_line(exc)}") from exc
        try:
            tree = bounded_git(into, "write-tree", env=env, memory=memory)
            sha = bounded_git(into, "commit-tree", tree, "-p", base_sha, "-F", str(message_file), env=env,
                              memory=memory)  # fmt: skip
            stat = bounded_git(into, "apply", "--stat", str(patch_file), env=env, memory=memory)
            mbox = bounded_git(into, "format-patch", "-1", "--stdout", "--binary", sha, env=env, memory=memory,
                               strip_newline_in_stdout=False)  # fmt: skip
        except GitMemoryError as exc:
            raise TaskFailure(f"could not make the commit for the patch: {exc}") from exc
        except git.GitCommandError as exc:
            raise TaskFailure(f"could not make the commit for the patch: {_stderr_line(exc)}") from exc
    return Commit(mirror=mirror, repository=into, sha=sha, diffstat=stat, mbox=mbox)


def _borrowing_repository(path: Path, mirror: Path) -> None:
    """A bare repository at ``path`` (no hooks, no template) that reads the mirror's objects as alternates."""
    if not (path / "HEAD").exists():
        path.mkdir(parents=True, exist_ok=True)
        git.Git(str(path)).execute(["git", "init", "-q", "--bare", "--template=", str(path)],
                                   env=git_env(allow_local=False))  # fmt: skip
    alternates = path / "objects" / "info" / "alternates"
    alternates.parent.mkdir(parents=True, exist_ok=True)
    alternates.write_text(f"{(mirror / 'objects').resolve()}\n")


def _resolve(clone: git.Repo, ref: str | None) -> str:
    candidates = [f"refs/heads/{ref}", f"refs/tags/{ref}", ref] if ref else ["HEAD"]
    for candidate in candidates:
        try:
            return str(clone.git.rev_parse("--verify", "--quiet", "--end-of-options", f"{candidate}^{{commit}}"))
        except git.GitCommandError:
            continue
    if ref:
        raise TaskFailure(f"ref not found: {ref!r} is not a branch, tag or commit of the repository")
    raise TaskFailure("clone failed: the repository has no commits")


def _stderr_line(exc: git.GitCommandError) -> str:
    text = str(exc.stderr or exc).strip().strip("'").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("stderr:")]
    for line in lines:
        if line.lower().startswith(("fatal:", "error:")):
            return line
    return lines[-1] if lines else "git failed"
