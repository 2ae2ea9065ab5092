"""A task with attempts always ends, on a real Redis queue: the reconciler sends a task whose attempts all ended and
that nobody ranked (the last attempt's own send was lost); a ranking whose worker died (its heartbeat stale) is put
back and ranked by the next worker, on the next claim number; a ranking that crashes ends the task failed with
the reason."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, update

import store.bestof
import store.patches
import store.tasks
from overnight.queue import TaskQueue
from sandbox.docker import DockerBackend
from store.engine import make_engine, make_sessionmaker, migrate
from store.models import Task, TaskState, utcnow
from tests.worker.conftest import make_context, outcome
from worker.pipeline import run_task
from worker.reconciler import reconcile


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """A database of the test's own: the reconciler looks at every task in it."""
    engine = make_engine(f"sqlite:///{tmp_path / 'own.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def queue(redis_url: str) -> Iterator[TaskQueue]:
    name = f"test-bestof-{secrets.token_hex(4)}"
    yield TaskQueue(redis_url, queue=name)
    redis.Redis.from_url(redis_url).delete(name)


def _ended_attempts(engine: Engine, diffs: list[str | None]) -> str:
    """A task whose attempts all ended: those with a diff succeeded with it, the others failed."""
    with make_sessionmaker(engine).begin() as session:
        group = store.tasks.create_task(session, repo="/nowhere", ref=None, instruction="fix add")
        for task, diff in zip(store.bestof.add_attempts(session, group, len(diffs)), diffs, strict=True):
            store.tasks.transition(session, task.id, from_states=[TaskState.queued], to_state=TaskState.running)
            if diff is not None:
                store.patches.store_patch(session, task.id, base_sha="a" * 40, diff=diff, title=f"t{len(diff)}",
                                          body="b", files_changed=1)  # fmt: skip
            store.tasks.transition(session, task.id, from_states=[TaskState.running],
                                   to_state=TaskState.succeeded if diff is not None else TaskState.failed,
                                   reason=None if diff is not None else "step budget exhausted")  # fmt: skip
        return group.id


def _reconcile(engine: Engine, queue: TaskQueue, *, stale_after: float = 60) -> dict[str, list[str]]:
    return reconcile(make_sessionmaker(engine), queue, stale_after=timedelta(seconds=stale_after),
                     lost_after=timedelta(seconds=0), max_attempts=3)  # fmt: skip


def test_the_reconciler_sends_a_task_whose_attempts_all_ended_and_nobody_ranked(
    sqlite_engine: Engine, queue: TaskQueue, docker_backend: DockerBackend, tmp_path: Path
) -> None:
    group_id = _ended_attempts(sqlite_engine, ["diff --git a/x b/x\n+longer one\n", "diff --git a/x b/x\n+one\n"])
    assert group_id in _reconcile(sqlite_engine, queue)["resent"] and queue.depth() == 1
    assert run_task(group_id, make_context(sqlite_engine, docker_backend, "http://127.0.0.1:9", tmp_path)) == "ran"
    group, patch, _ = outcome(sqlite_engine, group_id)
    assert group.state == "succeeded" and patch is not None and patch.diff.endswith("+one\n")  # the smaller
    assert group.ranking["best"] == 2
    assert group_id not in _reconcile(sqlite_engine, queue)["resent"]  # ended: nothing more to send


def test_a_ranking_whose_worker_died_is_put_back_and_ranked_again(
    sqlite_engine: Engine, queue: TaskQueue, docker_backend: DockerBackend, tmp_path: Path
) -> None:
    group_id = _ended_attempts(sqlite_engine, [None, "diff --git a/x b/x\n+one\n"])
    sessions = make_sessionmaker(sqlite_engine)
    with sessions.begin() as session:  # a worker claims the ranking, then dies
        assert store.bestof.claim_ranking(session, group_id, worker="dead:1", max_active_per_user=4) == 1
        session.execute(update(Task).where(Task.id == group_id).values(heartbeat_at=utcnow() - timedelta(hours=1)))
    assert not store.bestof.due_groups(sessions(), older_than=timedelta(0))  # held, so not sent as unranked
    done = _reconcile(sqlite_engine, queue, stale_after=30)
    assert done["requeued"] == [group_id]
    assert run_task(group_id, make_context(sqlite_engine, docker_backend, "http://127.0.0.1:9", tmp_path)) == "ran"
    group, _, events = outcome(sqlite_engine, group_id)
    assert group.state == "succeeded" and group.attempt == 2 and group.ranking["best"] == 2
    assert [data["state"] for kind, data in events if kind == "state"] == [
        "queued", "running", "queued", "running", "succeeded"]  # fmt: skip


def test_a_ranking_that_crashes_ends_the_task_failed_with_the_reason(
    sqlite_engine: Engine, docker_backend: DockerBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    group_id = _ended_attempts(sqlite_engine, ["diff --git a/x b/x\n+one\n"] * 2)

    def broken(*args: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store.bestof, "store_ranking", broken)
    assert run_task(group_id, make_context(sqlite_engine, docker_backend, "http://127.0.0.1:9", tmp_path)) == "ran"
    group, _, _ = outcome(sqlite_engine, group_id)
    assert group.state == "failed" and group.ranking is None
    assert group.failure_reason == "ranking the attempts failed: internal error: RuntimeError: disk on fire"
