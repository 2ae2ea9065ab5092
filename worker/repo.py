"""Checking out a task's repository on the worker, before any untrusted code runs."""

from __future__ import annotations

import os
import shutil
import tempfile
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


def clone_repository(repo: str, ref: str | None, dest: Path, *, pristine: Path, allow_local: bool) -> str:
    """Clone ``repo`` at ``ref`` (default branch when None) into ``dest``; return the base commit sha.

    The repository is first fetched into ``pristine`` (bare), which no untrusted code ever touches: the
    workspace is a full copy of it (no hardlinks), and the patch is checked against it at the end.
    """
    try:
        url = validate_repo_url(repo, allow_local=allow_local)
        ref = validate_ref(ref) if ref else None
    except InvalidRepoError as exc:
        raise TaskFailure(f"bad repository: {exc}") from exc
    if url.startswith("/") and not Path(url).exists():
        raise TaskFailure(f"clone failed: {url} does not exist")
    for folder in (dest, pristine):
        if folder.exists():
            shutil.rmtree(folder)
    dest.parent.mkdir(parents=True, exist_ok=True)
    env = _git_env(allow_local)
    try:
        bare = git.Repo.clone_from(url, pristine, env=env, bare=True, multi_options=["--no-recurse-submodules"])
    except git.GitCommandError as exc:
        raise TaskFailure(f"clone failed: {_stderr_line(exc)}") from exc
    sha = _resolve(bare, ref)
    try:
        clone = git.Repo.clone_from(
            str(pristine), dest, env=_git_env(True), no_checkout=True, multi_options=["--no-hardlinks"]
        )
        clone.git.checkout("-q", "-B", "overnight", sha)
        clone.git.remote("remove", "origin")
    except git.GitCommandError as exc:
        raise TaskFailure(f"checkout of {ref or 'the default branch'} failed: {_stderr_line(exc)}") from exc
    return sha


def check_patch_applies(pristine: Path, base_sha: str, diff: str) -> None:
    """``git apply --check`` of ``diff`` against a clean index of ``base_sha`` in the pristine copy."""
    if not diff:
        return
    with tempfile.TemporaryDirectory(prefix="overnight-check-") as tmp:
        env = {**_git_env(False), "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        patch_file = Path(tmp) / "task.diff"
        patch_file.write_text(diff)
        bare = git.Repo(pristine)
        try:
            bare.git.read_tree(base_sha, env=env)
            bare.git.apply("--cached", "--check", str(patch_file), env=env)
        except git.GitCommandError as exc:
            raise TaskFailure(f"the patch does not apply to the base commit: {_stderr_line(exc)}") from exc


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
