"""Best-of-N attempts through the API, against a real database and Redis queue: N is validated; N attempt tasks are
made and sent (not the task); the list shows the task, not its attempts; GET /attempts and ?attempt=K answer the
task's owner and 404 anyone else; the ranking shows once stored; cancel cancels every attempt; a message to the
task is refused with where to send it; the quota counts N."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

import store.bestof
import store.patches
import store.tasks
import store.users
from api.app import create_app
from overnight.queue import TaskQueue
from overnight.settings import Settings
from store.bestof import RankEntry, Ranking
from store.engine import make_engine, make_sessionmaker, migrate
from store.models import Task, TaskState

REPO = "https://github.com/acme/widgets.git"


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    settings = Settings(data_dir=tmp_path, broker_url=redis_url, queue=f"test-bestof-{secrets.token_hex(4)}")
    migrate(make_engine(settings.resolved_database_url))
    return settings


@pytest.fixture
def tokens(settings: Settings) -> dict[str, str]:
    with make_sessionmaker(make_engine(settings.resolved_database_url)).begin() as session:
        return {name: store.users.create_token(session, name) for name in ("alice", "bob")}


@pytest.fixture
def client(settings: Settings, redis_url: str, tokens: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {tokens['alice']}"}) as test_client:
        yield test_client
    redis.Redis.from_url(redis_url).delete(settings.queue)


def create(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/tasks", json={"repo": REPO, "instruction": "Fix it", **body})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def _sessions(settings: Settings):  # type: ignore[no-untyped-def]
    return make_sessionmaker(make_engine(settings.resolved_database_url))


def _end_with_patch(settings: Settings, task_id: str, diff: str) -> None:
    with _sessions(settings).begin() as session:
        store.tasks.transition(session, task_id, from_states=[TaskState.queued], to_state=TaskState.running)
        store.patches.store_patch(session, task_id, base_sha="a" * 40, diff=diff, title=f"t {task_id}", body="b",
                                  files_changed=1)  # fmt: skip
        store.tasks.transition(session, task_id, from_states=[TaskState.running], to_state=TaskState.succeeded)


@pytest.mark.parametrize("attempts", [0, 9, -1, "three"])
def test_attempts_outside_1_to_8_are_refused_with_422_naming_the_field(client: TestClient, attempts: Any) -> None:
    response = client.post("/v1/tasks", json={"repo": "https://github.com/a/b.git", "instruction": "x",
                                              "attempts": attempts})  # fmt: skip
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error" and "attempts" in str(error["details"])


def test_a_task_with_attempts_sends_its_attempt_tasks_and_lists_as_one(
    client: TestClient, settings: Settings, redis_url: str
) -> None:
    task = create(client, attempts=3)
    assert (task["attempts"], task["attempt_of"], task["attempt_index"], task["state"]) == (3, None, None, "queued")
    with _sessions(settings)() as session:
        attempts = store.bestof.attempts_of(session, task["id"])
        assert [(a.attempt_index, a.kind, a.attempt_of) for a in attempts] == [(k, "attempt", task["id"])
                                                                             for k in (1, 2, 3)]  # fmt: skip
        sent = {a.id for a in attempts if a.enqueued_at is not None}
    assert len(sent) == 3 and redis.Redis.from_url(redis_url).llen(settings.queue) == 3  # the attempts, not the task
    assert [t["id"] for t in client.get("/v1/tasks").json()["tasks"]] == [task["id"]]
    listed = client.get("/v1/tasks", params={"attempts": "true"}).json()["tasks"]
    assert {t["id"] for t in listed} == sent | {task["id"]}
    one = client.get(f"/v1/tasks/{next(iter(sent))}").json()
    assert one["attempt_of"] == task["id"] and one["kind"] == "attempt"
    single = create(client)
    assert single["attempts"] == 1
    assert client.get(f"/v1/tasks/{single['id']}/attempts").json()["error"]["code"] == "no_attempts"


def test_attempts_and_their_patches_are_the_owners_only_and_the_ranking_shows_once_stored(
    client: TestClient, settings: Settings, tokens: dict[str, str]
) -> None:
    task = create(client, attempts=2)
    with _sessions(settings)() as session:
        first, second = (a.id for a in store.bestof.attempts_of(session, task["id"]))
    listed = client.get(f"/v1/tasks/{task['id']}/attempts").json()
    assert listed["ranked"] is False and [a["rank"] for a in listed["attempts"]] == [None, None]
    assert client.get(f"/v1/tasks/{task['id']}/patch", params={"attempt": 1}).json()["error"]["code"] == (
        "task_not_finished"
    )
    _end_with_patch(settings, first, "diff --git a/x b/x\n+one\n")
    _end_with_patch(settings, second, "diff --git a/x b/x\n+two, longer\n")
    ranking = Ranking(best=1, entries=[
        RankEntry(attempt=1, task_id=first, state="succeeded", rank=1, reason="not checked; 22 B", patch_bytes=22),
        RankEntry(attempt=2, task_id=second, state="succeeded", rank=2, reason="not checked; 30 B", patch_bytes=30),
    ])  # fmt: skip
    with _sessions(settings).begin() as session:
        store.bestof.store_ranking(session, task["id"], ranking, first)
    listed = client.get(f"/v1/tasks/{task['id']}/attempts").json()
    assert listed["ranked"] is True and listed["best"] == 1
    assert [(a["attempt"], a["rank"], a["best"], a["task_id"]) for a in listed["attempts"]] == [
        (1, 1, True, first), (2, 2, False, second)]  # fmt: skip
    assert client.get(f"/v1/tasks/{task['id']}/patch").text == "diff --git a/x b/x\n+one\n"  # the best one's
    assert client.get(f"/v1/tasks/{task['id']}/patch", params={"attempt": 2}).text.endswith("+two, longer\n")
    as_json = client.get(f"/v1/tasks/{task['id']}/patch", params={"attempt": 2, "format": "json"})
    assert as_json.status_code == 200 and "+two" in as_json.json()["diff"]
    assert client.get(f"/v1/tasks/{task['id']}/patch", params={"attempt": 3}).status_code == 404
    bob = {"Authorization": f"Bearer {tokens['bob']}"}
    for path in ("attempts", "patch?attempt=2"):
        response = client.get(f"/v1/tasks/{task['id']}/{path}", headers=bob)
        assert response.status_code == 404 and response.json()["error"]["code"] == "task_not_found"
    assert client.get(f"/v1/tasks/{second}", headers=bob).status_code == 404


def test_cancel_cancels_every_attempt_and_a_message_to_the_task_says_where_to_send_it(
    client: TestClient, settings: Settings
) -> None:
    task = create(client, attempts=2)
    refused = client.post(f"/v1/tasks/{task['id']}/messages", json={"text": "use the helper"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "task_has_attempts"
    assert f"/v1/tasks/{task['id']}/attempts" in refused.json()["error"]["message"]
    with _sessions(settings).begin() as session:
        first = store.bestof.attempts_of(session, task["id"])[0].id
        store.tasks.transition(session, first, from_states=[TaskState.queued], to_state=TaskState.running)
    assert client.post(f"/v1/tasks/{task['id']}/cancel").status_code == 200
    with _sessions(settings)() as session:
        attempts = store.bestof.attempts_of(session, task["id"])
        assert [(a.state, a.cancel_requested) for a in attempts] == [("running", True), ("cancelled", False)]
        group = session.get(Task, task["id"])
        assert group is not None and group.cancel_requested and group.state == "queued"  # ended by its ranking


def test_the_quota_counts_every_attempt(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "api", settings.api.model_copy(update={"max_queued_tasks_per_user": 4}))
    create(client, attempts=3)
    refused = client.post("/v1/tasks", json={"repo": "https://github.com/a/b.git", "instruction": "x",
                                             "attempts": 2})  # fmt: skip
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_tasks"
    create(client)


def test_idempotency_retry_and_follow_up_of_a_task_with_attempts(
    client: TestClient, settings: Settings, redis_url: str
) -> None:
    """A repeated key returns the task and sends nothing more; once ranked, a follow-up starts from the task (its
    patch is the best attempt's), a retry runs N attempts again, and a retry of an attempt task is refused."""
    key = {"Idempotency-Key": "bestof-1"}
    first = client.post("/v1/tasks", json={"repo": REPO, "instruction": "Fix it", "attempts": 2}, headers=key)
    again = client.post("/v1/tasks", json={"repo": REPO, "instruction": "Fix it", "attempts": 2}, headers=key)
    assert (first.status_code, again.status_code) == (201, 200) and again.json()["id"] == first.json()["id"]
    assert redis.Redis.from_url(redis_url).llen(settings.queue) == 2
    task_id = first.json()["id"]
    with _sessions(settings)() as session:
        attempt_ids = [a.id for a in store.bestof.attempts_of(session, task_id)]
    for attempt_id in attempt_ids:
        _end_with_patch(settings, attempt_id, "diff --git a/x b/x\n+one\n")
    with _sessions(settings).begin() as session:
        ranking = Ranking(best=1, entries=[RankEntry(attempt=k, task_id=t, state="succeeded", rank=k, reason="r")
                                           for k, t in enumerate(attempt_ids, start=1)])  # fmt: skip
        store.bestof.store_ranking(session, task_id, ranking, attempt_ids[0])
        store.tasks.transition(session, task_id, from_states=[TaskState.queued], to_state=TaskState.succeeded)
    follow = client.post(f"/v1/tasks/{task_id}/follow-up", json={"instruction": "Now also the docs"})
    assert follow.status_code == 201 and follow.json()["parent_id"] == task_id and follow.json()["attempts"] == 1
    retried = client.post(f"/v1/tasks/{task_id}/retry")
    assert retried.status_code == 201 and retried.json()["attempts"] == 2
    with _sessions(settings)() as session:
        assert len(store.bestof.attempts_of(session, retried.json()["id"])) == 2
    refused = client.post(f"/v1/tasks/{attempt_ids[1]}/retry")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "task_is_an_attempt"


def test_an_unreachable_broker_fails_every_attempt_so_the_task_ends_failed_once_ranked(
    settings: Settings, tokens: dict[str, str]
) -> None:
    queue = TaskQueue("redis://127.0.0.1:1/0", queue="unused")
    with TestClient(create_app(settings, queue=queue)) as test_client:
        test_client.headers["Authorization"] = f"Bearer {tokens['alice']}"
        response = test_client.post("/v1/tasks", json={"repo": REPO, "instruction": "x", "attempts": 3})
        assert response.status_code == 503 and response.json()["error"]["code"] == "broker_unavailable"
        task = test_client.get("/v1/tasks").json()["tasks"][0]
        attempts = test_client.get(f"/v1/tasks/{task['id']}/attempts").json()["attempts"]
    assert [a["state"] for a in attempts] == ["failed"] * 3
    assert all("broker unreachable" in a["failure_reason"] for a in attempts)
    with _sessions(settings)() as session:
        assert store.bestof.ranking_due(session, task["id"])  # the reconciler sends it; it ends failed, with why


def test_a_task_with_attempts_shows_their_steps_and_tokens_together(client: TestClient, settings: Settings) -> None:
    task = create(client, attempts=2)
    with _sessions(settings).begin() as session:
        for k, attempt in enumerate(store.bestof.attempts_of(session, task["id"]), start=1):
            attempt.steps, attempt.prompt_tokens, attempt.completion_tokens = 3 * k, 1000 * k, 10 * k
    shown = client.get(f"/v1/tasks/{task['id']}").json()
    assert (shown["steps"], shown["prompt_tokens"], shown["completion_tokens"]) == (9, 3000, 30)
    listed = client.get("/v1/tasks").json()["tasks"][0]
    assert (listed["id"], listed["steps"], listed["prompt_tokens"]) == (task["id"], 9, 3000)
