"""Checking out a task's repository on the worker, before any untrusted code runs, and the git work on the
pristine mirror afterwards (does the patch apply, the commit for ``git am``)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import git

from overnight.repourl import InvalidRepoError, validate_ref, validate_repo_url
from worker.hostgit import DEFAULT_GIT_MEMORY, GitMemoryError, bounded_git
from worker.mirrors import MirrorCache, git_env


class TaskFailure(Exception):
    """A task step failed for a reason a person can read; the message becomes the task's failure reason."""


@dataclass(kw_only=True)
class Checkout:
    mirrors: MirrorCache
    allow_local: bool
    credentials: dict[str, str] = field(default_factory=dict)


def clone_repository(
    repo: str, ref: str | None, dest: Path, *, checkout: Checkout, credentials: dict[str, str] | None = None
) -> tuple[str, Path]:
    """Check ``repo`` out at ``ref`` (default branch when None) into ``dest``; return the base commit sha and
    the repository's mirror (the pristine copy no sandbox sees). ``credentials`` adds {host: token} for
    this task (a GitHub installation's). The workspace is a full copy of the
    mirror's objects (no hardlinks, no alternates) with no remote left in it."""
    try:
        url = validate_repo_url(repo, allow_local=checkout.allow_local)
        ref = validate_ref(ref) if ref else None
    except InvalidRepoError as exc:
        raise TaskFailure(f"bad repository: {exc}") from exc
    if url.startswith("/") and not Path(url).exists():
        raise TaskFailure(f"clone failed: {url} does not exist")
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    env = git_env(
        allow_local=checkout.allow_local, credentials={**checkout.credentials, **(credentials or {})}, url=url
    )
    with checkout.mirrors.locked(url) as path:
        try:
            mirror = checkout.mirrors.update(url, path, env)
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
    checkout.mirrors.prune(keep=path)
    return sha, path


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
