"""Git on the worker over bytes a task brought: an uploaded diff, a patch made in a sandbox, a workspace that
holds them. Such data can be small and inflate to gigabytes (a binary patch is deflated: 2.6 MiB of upload
made git allocate 2 GiB), so git runs here with an address-space limit (``OVERNIGHT_GIT_MEMORY_LIMIT``) and
small pack windows and caches: an inflating patch costs its task ("git ran out of memory"), never the worker.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git

from worker.errors import GitMemoryError
from worker.mirrors import git_env

DEFAULT_GIT_MEMORY = 2**30
DEFAULT_MAX_PATCH_BYTES = 16 * 2**20
BOUNDED_CONFIG = (
    "core.packedGitWindowSize=16m", "core.packedGitLimit=128m", "core.deltaBaseCacheLimit=16m",
    "core.bigFileThreshold=16m", "pack.windowMemory=16m", "pack.threads=1", "core.fsmonitor=false",
    "core.hooksPath=/dev/null",
)  # fmt: skip
"""Pack windows and caches small enough for the limit; blobs past 16 MiB are streamed, not held whole."""
OUT_OF_MEMORY = ("Out of memory", "Cannot allocate memory", "mmap failed")
# `ulimit -v` in the child: the limit binds git alone, set before it starts (no preexec_fn in a threaded worker).
LIMITED = 'ulimit -v "$1" && shift && exec "$@"'


def bounded_git(cwd: Path, *args: str, env: dict[str, str], memory: int, **kwargs: Any) -> str:
    """``git ARGS`` in ``cwd`` under an address-space limit of ``memory`` bytes; GitMemoryError when the data
    needs more, ``git.GitCommandError`` for any other failure."""
    config = [part for setting in BOUNDED_CONFIG for part in ("-c", setting)]
    command = ["sh", "-c", LIMITED, "sh", str(max(memory // 1024, 1)), "git", *config, *args]
    try:
        return str(git.Git(str(cwd)).execute(command, env=env, **kwargs))
    except git.GitCommandError as exc:
        stderr = str(exc.stderr or "")
        if any(sign in stderr for sign in OUT_OF_MEMORY):
            lines = [line.split("stderr: ", 1)[-1].strip(" '") for line in stderr.splitlines()
                     if any(sign in line for sign in OUT_OF_MEMORY)]  # fmt: skip
            raise GitMemoryError(
                f"git ran out of its {memory // 2**20} MiB memory limit on the worker (OVERNIGHT_GIT_MEMORY_LIMIT)"
                + (f": {lines[0][:200]}" if lines else "")
            ) from exc
        raise


@dataclass(kw_only=True, frozen=True)
class DataLimits:
    """What the bytes a task brings may cost the worker."""

    git_memory: int = DEFAULT_GIT_MEMORY
    """Address space of git on the worker over a task's data (OVERNIGHT_GIT_MEMORY_LIMIT)."""
    max_patch_bytes: int = DEFAULT_MAX_PATCH_BYTES
    """Largest diff read out of a sandbox (OVERNIGHT_MAX_PATCH_BYTES); a larger one fails its task."""


def workspace_tree(workspace: Path, *, memory: int) -> tuple[str, str | None, str | None]:
    """What a set-up in ``workspace`` can read, as git ids: the tree of every file there (tracked, untracked and
    ignored alike), its HEAD commit and that commit's tree (None without a commit). Hashed from a scratch
    copy of the index into a scratch object folder: the workspace itself is left as it was."""
    with tempfile.TemporaryDirectory(prefix="overnight-tree-") as tmp:
        index, objects = Path(tmp) / "index", Path(tmp) / "objects"
        objects.mkdir()
        if (workspace / ".git" / "index").is_file():
            shutil.copyfile(workspace / ".git" / "index", index)
        env = {**git_env(allow_local=False), "GIT_INDEX_FILE": str(index), "GIT_OBJECT_DIRECTORY": str(objects),
               "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(workspace / ".git" / "objects")}  # fmt: skip
        bounded_git(workspace, "add", "--all", "--force", "--", ".", env=env, memory=memory)
        tree = bounded_git(workspace, "write-tree", env=env, memory=memory)
        try:
            head = bounded_git(workspace, "show", "-s", "--format=%H %T", "HEAD", "--", env=env, memory=memory)
        except git.GitCommandError:
            return tree, None, None
        commit, head_tree = head.split()
        return tree, commit, head_tree
