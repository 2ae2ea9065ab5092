"""Images on POST /v1/tasks (issue 17 part 3), against a real database and Redis queue: multipart uploads
checked by content, the limits named in every refusal, URLs fetched only from addresses allowed, and the JSON
path unchanged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import store.images
import store.tasks
import store.users
from overnight.settings import APISettings, Settings
from store.engine import make_engine, make_sessionmaker
from store.models import TaskState
from tests.images import GIF, file_server, image_api, png

REPO = "https://github.com/acme/widgets.git"
TASK = {"repo": REPO, "ref": "main", "instruction": "Make the button look like the picture"}


def _client(
    tmp_path: Path, redis_url: str, api: APISettings | None = None, **images: Any
) -> Iterator[tuple[TestClient, Settings]]:
    return image_api(tmp_path, redis_url, user="alice", api=api, **images)


@pytest.fixture
def api(tmp_path: Path, redis_url: str) -> Iterator[tuple[TestClient, Settings]]:
    yield from _client(tmp_path, redis_url, max_bytes=4096, max_per_task=2)


@pytest.fixture
def api_loopback(tmp_path: Path, redis_url: str) -> Iterator[tuple[TestClient, Settings]]:
    yield from _client(tmp_path, redis_url, max_bytes=4096, fetch_allowed_networks=["127.0.0.1/32"])


def _images_of(settings: Settings, task_id: str) -> list[tuple[str, str | None, str | None, int, bytes | None]]:
    with make_sessionmaker(make_engine(settings.resolved_database_url))() as session:
        rows = store.images.list_images(session, task_id)
        return [(row.source, row.media_type, row.sha256, row.position, row.data) for row in rows]


def _form(*files: tuple[str, bytes, str], task: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "data": {"task": json.dumps(task or TASK)},
        "files": [("image", (name, data, content_type)) for name, data, content_type in files],
    }


def test_uploaded_images_are_stored_in_order_with_their_type_from_their_content(
    api: tuple[TestClient, Settings],
) -> None:
    client, settings = api
    # The sender's types are wrong on purpose: the content decides.
    answer = client.post(
        "/v1/tasks", **_form(("shot.png", png(), "application/octet-stream"), ("a.gif", GIF, "image/png"))
    )
    assert answer.status_code == 201, answer.text
    stored = _images_of(settings, answer.json()["id"])
    assert [(source, media, position) for source, media, _, position, _ in stored] == [
        ("upload", "image/png", 0), ("upload", "image/gif", 1)
    ]  # fmt: skip
    assert stored[0][4] == png() and len(stored[0][2] or "") == 64


def test_a_file_that_is_not_an_image_gets_415_naming_the_kinds_taken(api: tuple[TestClient, Settings]) -> None:
    client, _ = api
    answer = client.post("/v1/tasks", **_form(("evil.png", b"<script>alert(1)</script>", "image/png")))
    assert answer.status_code == 415
    error = answer.json()["error"]
    assert error["code"] == "not_an_image"
    assert "PNG, JPEG, GIF or WebP" in error["message"] and "evil.png" in error["message"]
    assert error["details"][0]["field"] == "image[0]"


def test_an_oversized_image_gets_413_naming_the_limit(api: tuple[TestClient, Settings]) -> None:
    client, _ = api
    big = png() + b"\x00" * 5000
    answer = client.post("/v1/tasks", **_form(("big.png", big, "image/png")))
    assert answer.status_code == 413
    error = answer.json()["error"]
    assert error["code"] == "image_too_large"
    assert "4096 bytes" in error["message"] and "OVERNIGHT_IMAGES_MAX_BYTES" in error["message"]


def test_more_images_than_allowed_get_422_naming_the_limit(api: tuple[TestClient, Settings]) -> None:
    client, _ = api
    answer = client.post("/v1/tasks", **_form(*[(f"{n}.png", png(), "image/png") for n in range(3)]))
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "too_many_images" and "OVERNIGHT_IMAGES_MAX_PER_TASK" in error["message"]


def test_the_task_part_is_validated_like_the_json_body(api: tuple[TestClient, Settings]) -> None:
    client, _ = api
    answer = client.post("/v1/tasks", **_form(("a.png", png(), "image/png"), task={"repo": REPO, "instruction": " "}))
    assert answer.status_code == 422
    assert answer.json()["error"]["details"][0]["field"] == "instruction"
    missing = client.post("/v1/tasks", files=[("image", ("a.png", png(), "image/png"))])
    assert missing.status_code == 422 and missing.json()["error"]["details"][0]["field"] == "task"


def test_the_json_body_still_creates_a_task_without_images(api: tuple[TestClient, Settings]) -> None:
    client, settings = api
    answer = client.post("/v1/tasks", json=TASK)
    assert answer.status_code == 201
    assert _images_of(settings, answer.json()["id"]) == []


def test_image_urls_to_loopback_are_refused_unless_the_operator_allows_the_network(
    api: tuple[TestClient, Settings], api_loopback: tuple[TestClient, Settings]
) -> None:
    routes = {"/shot.png": (200, {"Content-Type": "image/png"}, png())}
    with file_server(routes) as base:
        refused = api[0].post("/v1/tasks", json={**TASK, "image_urls": [f"{base}/shot.png"]})
        assert refused.status_code == 422
        error = refused.json()["error"]
        assert error["code"] == "image_url_refused" and "not a public address" in error["message"]
        assert "OVERNIGHT_IMAGES_FETCH_ALLOWED_NETWORKS" in error["message"]
        client, settings = api_loopback
        allowed = client.post("/v1/tasks", json={**TASK, "image_urls": [f"{base}/shot.png"]})
        assert allowed.status_code == 201, allowed.text
    [(source, media, _, _, data)] = _images_of(settings, allowed.json()["id"])
    assert (source, media, data) == ("url", "image/png", png())


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/", "http://127.0.0.2:1/x.png",
                                    "http://10.0.0.1/x.png", "file:///etc/passwd"])  # fmt: skip
def test_a_redirect_to_a_refused_address_is_not_followed(
    api_loopback: tuple[TestClient, Settings], target: str
) -> None:
    client, _ = api_loopback
    with file_server({"/go": (302, {"Location": target}, b"")}) as base:
        answer = client.post("/v1/tasks", json={**TASK, "image_urls": [f"{base}/go"]})
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "image_url_refused" and error["details"][0]["field"] == "image_urls.0"


def test_a_fetched_url_that_is_not_an_image_or_too_large_is_refused_naming_the_limit(
    api_loopback: tuple[TestClient, Settings],
) -> None:
    client, _ = api_loopback
    routes = {"/page": (200, {"Content-Type": "image/png"}, b"<html>"), "/big": (200, {}, png() + b"\0" * 9000)}
    with file_server(routes) as base:
        page = client.post("/v1/tasks", json={**TASK, "image_urls": [f"{base}/page"]})
        big = client.post("/v1/tasks", json={**TASK, "image_urls": [f"{base}/big"]})
    assert page.status_code == 415 and page.json()["error"]["code"] == "not_an_image"
    assert big.status_code == 413 and "OVERNIGHT_IMAGES_MAX_BYTES" in big.json()["error"]["message"]


def test_images_are_refused_when_the_server_takes_none(tmp_path: Path, redis_url: str) -> None:
    for client, _ in _client(tmp_path, redis_url, enabled=False):
        upload = client.post("/v1/tasks", **_form(("a.png", png(), "image/png")))
        url = client.post("/v1/tasks", json={**TASK, "image_urls": ["https://example.com/a.png"]})
        assert upload.status_code == url.status_code == 422
        assert upload.json()["error"]["code"] == url.json()["error"]["code"] == "images_disabled"
        assert client.post("/v1/tasks", json=TASK).status_code == 201


def test_the_create_route_takes_images_beyond_the_upload_limit_and_no_more(tmp_path: Path, redis_url: str) -> None:
    """Images widen POST /v1/tasks's body limit by what they may weigh (max_per_task x max_bytes), no further."""
    api = APISettings(max_upload_bytes=512 * 1024)
    for client, settings in _client(tmp_path, redis_url, api, max_bytes=600 * 1024, max_per_task=2):
        upload_limit = settings.api.max_upload_bytes
        limit = upload_limit + settings.images.upload_allowance
        heavy = png() + b"\0" * (600 * 1024 - len(png()))
        accepted = client.post("/v1/tasks", **_form(("a.png", heavy, "image/png"), ("b.png", heavy, "image/png")))
        assert accepted.status_code == 201, accepted.text  # 1.2 MB of images, over the 512 KiB upload limit
        too_big = client.post("/v1/tasks", json={**TASK, "instruction": "x" * 10, "pad": "y" * limit})
        assert too_big.status_code == 413 and str(limit) in too_big.json()["error"]["message"]
        assert client.post("/v1/tasks", json={**TASK, "pad": "y"}).status_code == 422  # a small body is read


def test_a_retry_carries_the_images_of_the_task_it_repeats(
    api: tuple[TestClient, Settings],
) -> None:
    client, settings = api
    created = client.post("/v1/tasks", **_form(("shot.png", png(), "image/png")))
    task_id = created.json()["id"]
    with make_sessionmaker(make_engine(settings.resolved_database_url)).begin() as session:
        store.tasks.transition(session, task_id, from_states=[TaskState.queued], to_state=TaskState.failed)
    retry = client.post(f"/v1/tasks/{task_id}/retry")
    assert retry.status_code == 201, retry.text
    assert [(s, m, d) for s, m, _, _, d in _images_of(settings, retry.json()["id"])] == [("upload", "image/png", png())]
