"""What the user's checkout says about a task: the repository (origin), the branch, the commit the remote
has, and what the user has that the remote does not (unpushed commits, uncommitted and untracked files)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

MAX_LOCAL_CHANGES = 10 * 2**20


class CheckoutError(Exception):
    """The checkout cannot be used as asked; the message says what to do."""


@dataclass(kw_only=True, frozen=True)
class Checkout:
    root: Path
    repo: str
    """origin's URL, or the checkout's own path when it has no origin."""
    branch: str | None
    base: str
    """The newest commit of HEAD's history that the remote has (HEAD itself without a remote)."""
    ahead: int
    """Local commits not on the remote."""
    dirty: list[str]
    """Changed and untracked files (porcelain lines)."""

    @property
    def has_local_changes(self) -> bool:
        return self.ahead > 0 or bool(self.dirty)


def _git(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise CheckoutError(lines[-1] if lines else f"git {args[0]} failed")
    return result.stdout


def inspect(path: Path) -> Checkout:
    try:
        root = Path(_git(path, "rev-parse", "--show-toplevel").strip())
    except (CheckoutError, FileNotFoundError) as exc:
        raise CheckoutError(f"{path} is not inside a git checkout; pass --repo") from exc
    head = _git(root, "rev-parse", "HEAD").strip()
    name = _git(root, "rev-parse", "--abbrev-ref", "HEAD").strip()
    branch = None if name == "HEAD" else name
    try:
        repo = _git(root, "remote", "get-url", "origin").strip()
    except CheckoutError:
        repo = ""
    local_only: set[str] = set()
    base = head
    if repo:
        # Commits of HEAD's history that no branch of origin has; the base is the newest one it has.
        local_only = set(_git(root, "rev-list", "HEAD", "--not", "--remotes=origin").split())
        if local_only:
            history = _git(root, "rev-list", "--first-parent", "HEAD").split()
            base = next((commit for commit in history if commit not in local_only), "")
            if not base:
                raise CheckoutError("no commit of this branch is on origin: push it first")
    else:
        repo = str(root)
    if repo.startswith(("/", ".")) or repo.startswith("file://"):
        repo = str(Path(repo.removeprefix("file://")).expanduser().resolve())
    ahead = int(_git(root, "rev-list", "--count", f"{base}..HEAD").strip()) if local_only else 0
    dirty = [line for line in _git(root, "status", "--porcelain", "--untracked-files=all").splitlines() if line]
    return Checkout(root=root, repo=repo, branch=branch, base=base, ahead=ahead, dirty=dirty)


def local_changes_diff(checkout: Checkout) -> str:
    """Everything the user has on top of ``checkout.base`` (commits, staged, unstaged, untracked files that are
    not ignored) as one binary-safe git diff, made with a scratch index so the user's index is untouched."""
    with tempfile.TemporaryDirectory(prefix="overnight-submit-") as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(checkout.root, "read-tree", "HEAD", env=env)
        _git(checkout.root, "add", "-A", "--", ".", env=env)
        diff = _git(checkout.root, "diff", "--cached", "--binary", "--full-index", "--no-color", "--no-ext-diff",
                    checkout.base, env=env)  # fmt: skip
    if len(diff.encode()) > MAX_LOCAL_CHANGES:
        raise CheckoutError(
            f"your local changes are {len(diff.encode())} bytes, more than {MAX_LOCAL_CHANGES} can be uploaded: "
            "push them, or pass --no-local-changes to start from the remote's commit"
        )
    return diff
