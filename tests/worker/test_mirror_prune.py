"""Mirror maintenance never breaks a task using the mirror: prune takes only mirrors no task holds."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import git
from worker.mirrors import MirrorCache, git_env


def _repository(path: Path) -> str:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "file.txt").write_text(f"{path.name}\n")
    git(path, "add", ".")
    git(path, "commit", "-qm", "first")
    return str(path)


def _fetch(mirrors: MirrorCache, url: str, path: Path) -> None:
    with mirrors.locked(url):
        mirrors.update(url, path, git_env(allow_local=True))


def test_prune_leaves_a_mirror_in_use_and_takes_it_once_released(tmp_path: Path) -> None:
    mirrors = MirrorCache(tmp_path / "mirrors", max_bytes=1)  # every prune wants every other mirror gone
    first, second = _repository(tmp_path / "first"), _repository(tmp_path / "second")
    with mirrors.in_use(first) as used:
        _fetch(mirrors, first, used)
        with mirrors.in_use(second) as other:
            _fetch(mirrors, second, other)
            assert mirrors.prune(keep=other) == []  # the first task is still reading its mirror
        assert (used / "HEAD").exists()
        assert mirrors.prune(keep=used) == [other]  # nobody holds the second one any more
    assert mirrors.prune(keep=other) == [used]
    assert not used.exists() and not other.exists()
