"""Checking out a task's repository on the worker, before any untrusted code runs, and the git work on the
pristine mirror afterwards (does the patch apply, the commit for ``git am``)."""

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


def check_patch_applies(mirror: Path, base_sha: str, diff: str, *, memory: int = DEFAULT_GIT_MEMORY) -> None:
    """``git apply --check`` of ``diff`` against a clean index of ``base_sha`` in the pristine mirror, with
    git's memory bounded (the patch was made in a sandbox)."""
    if not diff:
        return
    with tempfile.TemporaryDirectory(prefix="overnight-check-") as tmp:
        env = {**git_env(allow_local=False), "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        patch_file = Path(tmp) / "task.diff"
        patch_file.write_text(diff)
        try:
            bounded_git(mirror, "read-tree", base_sha, env=env, memory=memory)
            bounded_git(mirror, "apply", "--cached", "--check", str(patch_file), env=env, memory=memory)
        except GitMemoryError as exc:
            raise TaskFailure(f"the patch could not be checked: {exc}") from exc
        except git.GitCommandError as exc:
            raise TaskFailure(f"the patch does not apply to the base commit: {_stderr_line(exc)}") from exc


def format_patch(
    mirror: Path, base_sha: str, diff: str, message: str, *, author: str, email: str, memory: int = DEFAULT_GIT_MEMORY
) -> tuple[str, str]:
    """The diffstat and a ``git format-patch`` mbox of one commit with ``diff`` on ``base_sha``, made in a
    scratch clone of the pristine mirror (git's memory bounded for every step that reads the patch)."""
    if not diff:
        return "", ""
    with tempfile.TemporaryDirectory(prefix="overnight-mbox-") as tmp:
        env = {
            **git_env(allow_local=True),
            "GIT_AUTHOR_NAME": author, "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": author, "GIT_COMMITTER_EMAIL": email,
        }  # fmt: skip
        scratch = git.Repo.clone_from(str(mirror), Path(tmp) / "repo", env=env, no_checkout=True, shared=True)
        patch_file = Path(tmp) / "task.diff"
        patch_file.write_text(diff)
        message_file = Path(tmp) / "message"
        message_file.write_text(message)
        work = Path(tmp) / "repo"
        try:
            scratch.git.checkout("-q", "--detach", base_sha, env=env)
            stat = bounded_git(work, "apply", "--stat", str(patch_file), env=env, memory=memory)
            bounded_git(work, "apply", "--index", str(patch_file), env=env, memory=memory)
            bounded_git(work, "commit", "-q", "--no-verify", "-F", str(message_file), env=env, memory=memory)
            mbox = bounded_git(work, "format-patch", "-1", "--stdout", "--binary", env=env, memory=memory,
                               strip_newline_in_stdout=False)  # fmt: skip
        except GitMemoryError as exc:
            raise TaskFailure(f"could not make the commit for the patch: {exc}") from exc
        except git.GitCommandError as exc:
            raise TaskFailure(f"could not make the commit for the patch: {_stderr_line(exc)}") from exc
        return stat, mbox


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
