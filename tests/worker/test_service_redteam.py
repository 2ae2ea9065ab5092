"""Red-team findings on the worker side of "who may read which repository" (issue 22), each a hole
now closed: these tests keep it so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from overnight.access import Requester
from overnight.loopback import LoopbackServer
from tests.conftest import git
from tests.github_https import make_tls
from tests.worker.conftest import local_access
from tests.worker.test_repo_access import OneToken, RecordingGit
from worker.errors import TaskFailure
from worker.mirrors import MirrorCache
from worker.repo import Checkout, clone_repository

TOKEN = "s3cret-token"


@pytest.fixture
def served(tmp_path: Path, buggy_repo: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RecordingGit, str]]:
    root = tmp_path / "served"
    for name in ("acme/private.git", "bob/own.git"):
        git(tmp_path, "clone", "-q", "--bare", str(buggy_repo), str(root / name))
    ca, chain, key = make_tls(tmp_path / "tls")
    server = RecordingGit(root, OneToken())  # type: ignore[arg-type]
    with LoopbackServer(server, name="git server", tls=(chain, key)) as loopback:
        monkeypatch.setenv("GIT_SSL_CAINFO", str(ca))
        yield server, loopback.url


def test_dot_segments_do_not_borrow_another_pattern_s_credentials(
    served: tuple[RecordingGit, str], tmp_path: Path
) -> None:
    """acme/* is alice's, bob/* is bob's. Bob names ``BASE/bob/../acme/private``: it matches his own pattern
    only, but git (curl) asks the server for /acme/private with the worker's token."""
    server, base = served
    access = local_access(tmp_path, mapping={f"{base}/acme/*": ("alice",), f"{base}/bob/*": ("bob",)})
    checkout = Checkout(mirrors=MirrorCache(tmp_path / "mirrors", max_bytes=2**30), access=access,
                        credentials={base.removeprefix("https://"): TOKEN})  # fmt: skip
    bob = Requester(name="bob", is_admin=False)
    with pytest.raises(TaskFailure, match=r"bad repository: .* '\.\.' path segments"):
        clone_repository(f"{base}/bob/../acme/private.git", None, tmp_path / "ws", checkout=checkout, owner=bob)
    assert not any(request.path.startswith("/acme/") for request in server.requests), server.requests
