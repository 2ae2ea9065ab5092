"""Checking out a task's repository on the worker, before any untrusted code runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import git

from overnight.repourl import InvalidRepoError, validate_ref, validate_repo_url


class TaskFailure(Exception):
    """A task step failed for a reason a person can read; the message becomes the task's failure reason."""


def _git_env(allow_local: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GIT_ALLOW_PROTOCOL="https:ssh" + (":file" if allow_local else ""),
        GIT_SSH_COMMAND="ssh -o BatchMode=yes",
        GIT_CONFIG_NOSYSTEM="1",
    )
    return env


def clone_repository(repo: str, ref: str | None, dest: Path, *, allow_local: bool) -> str:
    """Clone ``repo`` into ``dest`` at ``ref`` (default branch when None); return the base commit sha."""
    try:
        url = validate_repo_url(repo, allow_local=allow_local)
        ref = validate_ref(ref) if ref else None
    except InvalidRepoError as exc:
        raise TaskFailure(f"bad repository: {exc}") from exc
    if url.startswith("/") and not Path(url).exists():
        raise TaskFailure(f"clone failed: {url} does not exist")
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    env = _git_env(allow_local)
    try:
        clone = git.Repo.clone_from(url, dest, env=env, no_checkout=True, multi_options=["--no-recurse-submodules"])
    except git.GitCommandError as exc:
        raise TaskFailure(f"clone failed: {_stderr_line(exc)}") from exc
    sha = _resolve(clone, ref)
    try:
        clone.git.checkout("-q", "-B", "overnight", sha, env=env)
        clone.git.remote("remove", "origin")
    except git.GitCommandError as exc:
        raise TaskFailure(f"checkout of {ref or 'the default branch'} failed: {_stderr_line(exc)}") from exc
    return sha


def _resolve(clone: git.Repo, ref: str | None) -> str:
    candidates = [f"refs/remotes/origin/{ref}", f"refs/tags/{ref}", ref] if ref else ["HEAD"]
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
