"""Bodies are limited while they stream and tokens are checked before a body is read, against the API under
uvicorn (tests/api/conftest.py): a chunked body sends no Content-Length, so only counting what arrives stops
it; a client that keeps sending after the answer shows how much the server read before answering."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from bench.flood import MIB, Answer, send_chunked, send_declared
from tests.api.conftest import ServedAPI

FLOOD = 256 * MIB
"""What each oversized request would send; the server must answer (and hang up) long before."""
READ_AT_MOST = 32 * MIB
"""The limit plus what the kernel's socket buffers take in before the server reads anything."""
WRONG_SIGNATURE = {"X-Hub-Signature-256": "sha256=" + "0" * 64, "X-GitHub-Event": "issues",
                   "X-GitHub-Delivery": "oversized-1"}  # fmt: skip
JSON = {"Content-Type": "application/json"}


def error_of(answer: Answer) -> dict[str, Any]:
    body = json.loads(answer.body)
    assert set(body) == {"error"}, body
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("path", "authorised", "limit"),
    [
        ("/v1/github/webhook", False, "OVERNIGHT_GITHUB_WEBHOOK_MAX_BODY_BYTES"),
        ("/v1/tasks", True, "OVERNIGHT_API_MAX_UPLOAD_BYTES"),
        ("/v1/tasks/0123456789abcdef/follow-up", True, "OVERNIGHT_API_MAX_BODY_BYTES"),
    ],
    ids=["webhook-wrong-signature", "create-task", "follow-up"],
)
def test_a_chunked_body_over_its_limit_is_answered_413_and_never_read_to_the_end(
    served_api: ServedAPI, path: str, authorised: bool, limit: str
) -> None:
    headers = {**JSON, **WRONG_SIGNATURE}
    if authorised:
        headers["Authorization"] = f"Bearer {served_api.token('limits')}"
    answer = send_chunked(served_api.port, path, headers, FLOOD)
    assert answer.status == 413, answer
    error = error_of(answer)
    assert error["code"] == "payload_too_large"
    assert str(served_api.limit(limit)) in error["message"]
    assert answer.closed, "the server must hang up rather than read the rest"
    assert answer.sent < READ_AT_MOST, f"{answer.sent} bytes went out before the answer"


@pytest.mark.parametrize("path", ["/v1/tasks", "/v1/github/webhook"])
def test_a_declared_length_over_the_limit_is_refused_before_a_byte_is_read(served_api: ServedAPI, path: str) -> None:
    headers = {**JSON, **WRONG_SIGNATURE, "Authorization": f"Bearer {served_api.token('declared')}"}
    answer = send_declared(served_api.port, path, headers, 800 * MIB)  # only the head is sent
    assert answer.status == 413, answer
    assert error_of(answer)["code"] == "payload_too_large"


def test_task_creation_takes_uploads_over_the_default_limit(served_api: ServedAPI) -> None:
    client = served_api.client(served_api.token("within"))
    upload = base64.b64encode(b"x" * 100_000).decode()  # 133 kB of JSON: over the 64 KiB of other routes
    assert len(upload) > served_api.limit("OVERNIGHT_API_MAX_BODY_BYTES")
    body = {"repo": "https://github.com/acme/widgets.git", "ref": "main", "instruction": "Fix it",
            "local_changes": {"content": upload}}  # fmt: skip
    response = client.post("/v1/tasks", json=body)
    assert response.status_code == 201, response.text


def test_no_token_is_401_before_the_body_is_read_or_validated(served_api: ServedAPI) -> None:
    anonymous = served_api.client()
    invalid = anonymous.post("/v1/tasks", json={"nonsense": True})  # the schema would say 422
    assert invalid.status_code == 401, invalid.text
    assert invalid.json() == {
        "error": {"code": "unauthorized", "message": "a bearer token is required (Authorization: Bearer TOKEN)"}
    }
    assert invalid.headers["www-authenticate"] == "Bearer"
    wrong = anonymous.post("/v1/tasks", json={}, headers={"Authorization": "Bearer ovn_not-a-token"})
    assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "the bearer token is not valid"
    flood = send_chunked(served_api.port, "/v1/tasks", JSON, FLOOD)
    assert flood.status == 401 and error_of(flood)["code"] == "unauthorized"
    assert flood.closed and flood.sent < READ_AT_MOST


def test_every_v1_route_but_the_webhook_wants_the_token_first(served_api: ServedAPI) -> None:
    anonymous = served_api.client()
    for method, path in [("GET", "/v1/tasks"), ("POST", "/v1/tasks/abc/retry"), ("POST", "/v1/tasks/abc/follow-up"),
                         ("GET", "/v1/no-such-route")]:  # fmt: skip
        response = anonymous.request(method, path, content=b"{not json")
        assert response.status_code == 401, (method, path, response.text)
    assert anonymous.get("/healthz").status_code == 200


def test_a_webhook_without_a_signature_is_refused_before_its_body_is_read(served_api: ServedAPI) -> None:
    headers = {**JSON, "X-GitHub-Event": "issues", "X-GitHub-Delivery": "unsigned-1"}
    answer = send_chunked(served_api.port, "/v1/github/webhook", headers, FLOOD)
    assert answer.status == 401 and error_of(answer)["code"] == "bad_signature"
    assert answer.closed and answer.sent < READ_AT_MOST
