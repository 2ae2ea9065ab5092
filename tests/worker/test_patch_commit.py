"""The patch's one commit: made once on the base commit from the pristine mirror (which is the check that the
patch applies), its diffstat and mbox read from it, and none of its objects left in the mirror that other
users' tasks clone."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import git
from worker.errors import TaskFailure
from worker.repo import commit_patch

FIX = "--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a - b\n+    return a + b\n"


def _mirror(buggy_repo: Path, tmp_path: Path) -> tuple[Path, str]:
    mirror = tmp_path / "mirror.git"
    git(tmp_path, "clone", "-q", "--mirror", str(buggy_repo), str(mirror))
    return mirror, git(mirror, "rev-parse", "HEAD").strip()


def _objects(repository: Path) -> set[str]:
    listed = git(repository, "cat-file", "--batch-all-objects", "--batch-check=%(objectname)")
    return set(listed.split())


def test_the_commit_is_made_once_and_the_mirror_gains_no_object(buggy_repo: Path, tmp_path: Path) -> None:
    mirror, base = _mirror(buggy_repo, tmp_path)
    before = _objects(mirror)
    diff = f"diff --git a/calc.py b/calc.py\n{FIX}"
    commit = commit_patch(mirror, base, diff, "Fix add\n\nIt added.\n", into=tmp_path / "task.commit",
                          author="Overnight", email="o@example.com")  # fmt: skip
    assert commit is not None and commit.mirror == mirror
    assert _objects(mirror) == before  # the commit's objects are the task's own
    assert git(commit.repository, "log", "--format=%P|%an <%ae>|%s", "-1", commit.sha).strip() == (
        f"{base}|Overnight <o@example.com>|Fix add"
    )
    assert commit.mbox.startswith(f"From {commit.sha} ") and "+    return a + b" in commit.mbox
    assert commit.diffstat.split()[:4] == ["calc.py", "|", "2", "+-"]
    fresh = tmp_path / "fresh"
    git(tmp_path, "clone", "-q", str(buggy_repo), str(fresh))
    subprocess.run(["git", "am", "-q"], cwd=fresh, input=commit.mbox, text=True, check=True)
    assert git(fresh, "rev-parse", "HEAD^{tree}") == git(commit.repository, "rev-parse", f"{commit.sha}^{{tree}}")


def test_a_patch_that_does_not_apply_to_the_base_is_refused_and_an_empty_one_makes_no_commit(
    buggy_repo: Path, tmp_path: Path
) -> None:
    mirror, base = _mirror(buggy_repo, tmp_path)
    stale = f"diff --git a/calc.py b/calc.py\n{FIX.replace('a - b', 'a * b', 1)}"
    with pytest.raises(TaskFailure, match=r"^the patch does not apply to the base commit: error: .*calc\.py"):
        commit_patch(mirror, base, stale, "x\n", into=tmp_path / "task.commit", author="O", email="o@example.com")
    assert commit_patch(mirror, base, "", "x\n", into=tmp_path / "none", author="O", email="o@example.com") is None
    assert not (tmp_path / "none").exists()
