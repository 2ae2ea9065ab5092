"""Cached environments: a sandbox snapshotted after a successful set-up, reused by the next task whose
set-up would have read exactly the same inputs (base image, repository, set-up script, the tree it ran on,
and whose uploaded or follow-up work that tree holds), expired by age and evicted by total size, least
recently used first.

Each backend knows how to snapshot and remove (both: a folder holding a copy of the set-up's
/opt/overnight, ``sandbox.disk.keep_environment``); this module keeps the index, shared by the workers of
one host under a file lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from sandbox.base import Sandbox

WORKSPACE_ARCHIVE = "/opt/overnight/workspace.tar"
"""Files the set-up left in the workspace, restored into the workspace of a task that starts from the cache."""
WORKSPACE_PATHS = "/opt/overnight/workspace.paths"
"""Their paths, one a line: kept out of the patch (they are the set-up's, not the agent's)."""
WORKSPACE_MODIFIED = "/opt/overnight/workspace.modified"
"""Tracked files the set-up changed, with the hash of their content after it (NUL-separated pairs): kept out
of the patch unless the agent changed them further."""


class Snapshotter(Protocol):
    def snapshot(self, sandbox: Sandbox, key: str) -> tuple[str, int]:
        """Freeze ``sandbox`` as environment ``key``; return its reference (for ``SandboxSpec.image``) and size."""
        ...

    def remove_environment(self, ref: str) -> None: ...


class EnvironmentEntry(BaseModel):
    key: str
    ref: str
    size: int
    created: float
    last_used: float


def environment_key(
    *,
    image: str,
    repository: str,
    script_path: str,
    script: bytes,
    commit: str,
    tree: str,
    owner: str | None,
    environment: str = "",
) -> str:
    """The key of a set-up's snapshot: everything the set-up could read. ``tree`` is the content of the
    workspace it ran in (the base ``commit``'s tree, or that plus an uploaded or a parent task's diff);
    ``owner`` is whose that added work is (None when the tree is the commit's own: shared by every task on it);
    ``environment`` stands for what the task's environment gave it (variables, secrets' versions; empty: none)."""
    digest = hashlib.sha256()
    parts: tuple[str | bytes, ...] = (image, repository, script_path, script, commit, tree,
                                      "shared" if owner is None else f"user:{owner}")  # fmt: skip
    parts += (f"environment:{environment}",) if environment else ()
    for part in parts:
        digest.update(hashlib.sha256(part if isinstance(part, bytes) else part.encode()).digest())
    return digest.hexdigest()[:32]


class EnvironmentCache:
    def __init__(self, index_dir: Path, backend: Snapshotter, *, max_age: float, max_bytes: int) -> None:
        self.index_path = index_dir / "index.json"
        self.backend = backend
        self.max_age = max_age
        self.max_bytes = max_bytes
        index_dir.mkdir(parents=True, exist_ok=True)

    def lookup(self, key: str) -> str | None:
        """The reference of a fresh environment for ``key`` (marked used), or None."""
        with self._index() as entries:
            entry = entries.get(key)
            if entry is None:
                return None
            if time.time() - entry.created > self.max_age:
                self._drop(entries, key)
                return None
            entry.last_used = time.time()
            return entry.ref

    def store(self, sandbox: Sandbox, key: str) -> str:
        ref, size = self.backend.snapshot(sandbox, key)
        now = time.time()
        with self._index() as entries:
            previous = entries.get(key)
            if previous is not None and previous.ref != ref:
                self._drop(entries, key)
            entries[key] = EnvironmentEntry(key=key, ref=ref, size=size, created=now, last_used=now)
            self._evict(entries, keep=key)
        return ref

    def entries(self) -> list[EnvironmentEntry]:
        with self._index() as entries:
            return list(entries.values())

    def _evict(self, entries: dict[str, EnvironmentEntry], *, keep: str) -> None:
        now = time.time()
        for key in [k for k, e in entries.items() if now - e.created > self.max_age and k != keep]:
            self._drop(entries, key)
        by_age = sorted((e for e in entries.values() if e.key != keep), key=lambda e: e.last_used)
        total = sum(e.size for e in entries.values())
        for entry in by_age:
            if total <= self.max_bytes:
                break
            total -= entry.size
            self._drop(entries, entry.key)

    def _drop(self, entries: dict[str, EnvironmentEntry], key: str) -> None:
        entry = entries.pop(key)
        self.backend.remove_environment(entry.ref)

    @contextmanager
    def _index(self) -> Iterator[dict[str, EnvironmentEntry]]:
        with open(self.index_path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                raw = json.loads(self.index_path.read_text()) if self.index_path.exists() else {}
                entries = {key: EnvironmentEntry.model_validate(value) for key, value in raw.items()}
                yield entries
                temporary = self.index_path.with_suffix(".tmp")
                temporary.write_text(json.dumps({k: e.model_dump() for k, e in entries.items()}, indent=1))
                temporary.replace(self.index_path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
