"""The environment cache with real snapshots (bubblewrap folders and Docker images): keys, reuse, expiry
by age, eviction by total size, least recently used first."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox.base import SandboxBackend, SandboxSpec, SandboxUnavailableError
from sandbox.environments import EnvironmentCache, environment_key


def _snapshot(cache: EnvironmentCache, backend: SandboxBackend, workspace: Path, key: str, megabytes: int) -> str:
    box = backend.start(SandboxSpec(task_id=f"env-{key}", workspace=workspace, purpose="setup"))
    try:
        box.run(f"head -c {megabytes * 2**20} /dev/urandom > /opt/overnight/blob-{key}")
        return cache.store(box, key)
    finally:
        box.close()


def test_keys_change_with_any_input() -> None:
    base = {"image": "img:1", "repository": "https://x/y.git", "script_path": ".overnight/setup.sh",
            "script": b"make", "commit": "c" * 40, "tree": "t" * 40, "owner": None}  # fmt: skip
    key = environment_key(**base)  # type: ignore[arg-type]
    assert key == environment_key(**base)  # type: ignore[arg-type]
    changes = ({"image": "img:2"}, {"script": b"make all"}, {"script_path": "ci/setup.sh"}, {"commit": "d" * 40},
               {"tree": "u" * 40}, {"owner": "1"})  # fmt: skip
    keys = {environment_key(**(base | change)) for change in changes}  # type: ignore[arg-type]
    assert key not in keys and len(keys) == len(changes)
    assert environment_key(**(base | {"owner": "1"})) != environment_key(**(base | {"owner": "2"}))  # type: ignore[arg-type]


def test_lru_eviction_by_total_size_and_expiry_by_age(
    backend: SandboxBackend, tmp_path: Path, new_workspace: Callable[..., Path]
) -> None:
    workspace = new_workspace(backend)
    cache = EnvironmentCache(tmp_path / "index", backend, max_age=3600, max_bytes=25 * 2**20)
    first = _snapshot(cache, backend, workspace, "aaa", 10)
    second = _snapshot(cache, backend, workspace, "bbb", 10)
    assert cache.lookup("aaa") == first  # now "bbb" is the least recently used
    third = _snapshot(cache, backend, workspace, "ccc", 10)
    assert {e.key for e in cache.entries()} == {"aaa", "ccc"}
    assert cache.lookup("bbb") is None
    box = backend.start(SandboxSpec(task_id="env-use", workspace=workspace, image=third))
    try:
        assert box.run("ls /opt/overnight").stdout.split() == ["blob-ccc"]
    finally:
        box.close()
    with pytest.raises(SandboxUnavailableError):  # the evicted snapshot is really gone
        box = backend.start(SandboxSpec(task_id="env-gone", workspace=workspace, image=second))
        box.close()
    aged = EnvironmentCache(tmp_path / "index", backend, max_age=0.5, max_bytes=25 * 2**20)
    time.sleep(0.6)
    assert aged.lookup("aaa") is None and aged.lookup("ccc") is None
    assert aged.entries() == []
    del first


def test_a_set_up_s_proxy_does_not_reach_sandboxes_started_from_its_snapshot(
    backend: SandboxBackend, tmp_path: Path, new_workspace: Callable[..., Path]
) -> None:
    workspace = new_workspace(backend)
    cache = EnvironmentCache(tmp_path / "cache", backend, max_age=3600, max_bytes=2**30)
    proxy = {
        "HTTPS_PROXY": "http://user:s3cret@proxy.internal:3128",
        "https_proxy": "http://user:s3cret@proxy.internal:3128",
    }
    setup = backend.start(SandboxSpec(task_id="env-proxy", workspace=workspace, purpose="setup", env=proxy))
    try:
        assert "s3cret" in setup.run("echo $HTTPS_PROXY").stdout
        ref = cache.store(setup, "proxykey")
    finally:
        setup.close()
    agent = backend.start(SandboxSpec(task_id="env-proxy-agent", workspace=workspace, image=ref))
    try:
        result = agent.run("env")
        assert result.exit_code == 0 and "s3cret" not in result.stdout
    finally:
        agent.close()
