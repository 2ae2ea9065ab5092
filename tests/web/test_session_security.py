"""Attempts to get around the web app's sign-in: another user's tasks by address, requests without (or with
someone else's) CSRF token, forged and replayed cookies, revoked and expired tokens, login CSRF, open
redirects; and the cookie's own flags. The bearer-token API must behave as before."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from fastapi.testclient import TestClient

import store.tasks
import store.users
from api.app import create_app
from overnight.settings import Settings
from store.models import Task, TaskState, Token, utcnow
from tests.web.conftest import Browser, sign_in
from web.session import KEY_FILE, SESSION_COOKIE, SessionCodec, fingerprint, load_session_key

DIFF = (
    "diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n"
    "@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a - b\n+    return a + b\n"
)


def session_cookie(browser: Browser) -> str:
    value = browser.client.cookies.get(SESSION_COOKIE)
    assert value
    return value


def test_signing_in_sets_an_httponly_samesite_cookie_that_lasts_a_week_at_most(
    browser: Callable[..., Browser], tokens: dict[str, str]
) -> None:
    client = browser().client
    answer = sign_in(client, tokens["alice"], "/tasks/abc")
    assert answer.status_code == 303 and answer.headers["location"] == "/tasks/abc"
    cookie = next(value for value in answer.headers.get_list("set-cookie") if value.startswith(SESSION_COOKIE))
    flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
    assert "httponly" in flags and flags["samesite"].lower() == "samesite=lax" and flags["path"] == "Path=/"
    assert flags["max-age"] == f"Max-Age={7 * 24 * 3600}"
    assert "secure" not in flags  # plain HTTP here; see the HTTPS test
    assert tokens["alice"] not in cookie  # the token itself never goes into the cookie


def test_cookies_are_secure_over_https_and_when_the_public_url_is_https(
    browser: Callable[..., Browser], tokens: dict[str, str], settings: Settings
) -> None:
    answer = sign_in(browser(base_url="https://testserver").client, tokens["alice"])
    session = next(value for value in answer.headers.get_list("set-cookie") if SESSION_COOKIE in value)
    # __Host-: the browser keeps it only as Secure, Path=/, no Domain (no sibling host can plant or replace it)
    assert session.startswith(f"__Host-{SESSION_COOKIE}=") and "; secure" in session.lower()
    over_tls = browser("alice", base_url="https://testserver")  # the whole flow works under those names
    assert over_tls.page("/").status_code == 200
    planted = browser(base_url="https://testserver").client  # a plain-named one (a sibling host's) is not read
    planted.cookies.set(SESSION_COOKIE, over_tls.client.cookies[f"__Host-{SESSION_COOKIE}"])
    assert planted.get("/").status_code == 303
    assert (
        over_tls.api("POST", "/v1/tasks", json={"repo": "https://github.com/a/b.git", "instruction": "x"}).status_code
        == 201
    )
    # Behind a proxy that ends TLS the API may see plain HTTP: its public address says the cookies travel over HTTPS.
    behind_proxy = settings.model_copy(update={"public_url": "https://overnight.example.com"})
    form = TestClient(create_app(behind_proxy), follow_redirects=False).get("/sign-in")
    assert "; secure" in form.headers["set-cookie"].lower()


def test_a_session_never_outlives_its_token(browser: Callable[..., Browser], sessions: Any) -> None:
    with sessions.begin() as session:
        token = store.users.create_token(session, "carol", expires_at=utcnow() + timedelta(hours=2))
    answer = sign_in(browser().client, token)
    max_age = int(answer.headers["set-cookie"].split("Max-Age=")[1].split(";")[0])
    assert 2 * 3600 - 60 <= max_age <= 2 * 3600


def test_a_wrong_token_is_refused_with_the_reason_and_no_cookie(
    browser: Callable[..., Browser], sessions: Any, tokens: dict[str, str]
) -> None:
    client = browser().client
    answer = sign_in(client, "ovn_not-a-token")
    assert answer.status_code == 401 and "not valid" in answer.text
    assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")
    with sessions.begin() as session:
        store.users.revoke_tokens(session, user_name="bob")
    answer = sign_in(client, tokens["bob"])
    assert answer.status_code == 401 and "revoked" in answer.text


def test_the_sign_in_form_refuses_a_post_from_another_site(
    browser: Callable[..., Browser], tokens: dict[str, str]
) -> None:
    """Login CSRF: a page elsewhere cannot sign the browser in as the attacker (no nonce, or a wrong one)."""
    client = browser().client
    no_nonce = client.post("/sign-in", data={"token": tokens["bob"]})
    client.get("/sign-in")  # the browser holds a nonce cookie; the attacker's form cannot know it
    wrong = client.post("/sign-in", data={"token": tokens["bob"], "csrf_token": "guessed"})
    for answer in (no_nonce, wrong):
        assert answer.status_code == 403
        assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")


@pytest.mark.parametrize("target", ["//evil.example", "https://evil.example/", "/\\evil.example", "evil", "/\x01x"])
def test_sign_in_never_redirects_to_another_site(
    browser: Callable[..., Browser], tokens: dict[str, str], target: str
) -> None:
    answer = sign_in(browser().client, tokens["alice"], target)
    assert answer.status_code == 303 and answer.headers["location"] == "/"


def test_pages_without_a_session_send_the_visitor_to_sign_in_and_back(browser: Callable[..., Browser]) -> None:
    client = browser().client
    for path in ["/", "/tasks/new", "/tasks/0123456789abcdef", "/tasks/0123456789abcdef/summary", "/?state=failed"]:
        answer = client.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/sign-in?next=/")
    assert client.get("/v1/tasks").status_code == 401


def test_another_users_task_is_not_found_by_list_or_by_address(
    browser: Callable[..., Browser], make_task: Callable[..., str]
) -> None:
    secret = make_task("alice", instruction="Alice-secret instruction", repo="https://github.com/alice/private.git",
                       state=TaskState.succeeded, diff=DIFF)  # fmt: skip
    bob = browser("bob")
    for path in ["/", "/?partial=rows", "/tasks/new", "/?repo=https://github.com/alice/private.git&partial=rows"]:
        page = bob.page(path)
        assert page.status_code == 200
        assert "Alice-secret" not in page.text and "alice/private" not in page.text and secret not in page.text
    filtered = bob.page("/?repo=https://github.com/alice/private.git")  # his own filter is shown back, nothing else
    assert "Alice-secret" not in filtered.text and secret not in filtered.text and "No task matches" in filtered.text
    for path in [f"/tasks/{secret}", f"/tasks/{secret}/summary"]:
        page = bob.page(path)
        assert page.status_code == 404 and "Alice-secret" not in page.text
    for path in [f"/v1/tasks/{secret}", f"/v1/tasks/{secret}/events", f"/v1/tasks/{secret}/patch?format=json"]:
        assert bob.api("GET", path).status_code == 404, path
    sse = bob.api("GET", f"/v1/tasks/{secret}/events", headers={"Accept": "text/event-stream"})
    assert sse.status_code == 404
    for action in ["cancel", "retry", "follow-up"]:
        body = {"instruction": "steal"} if action == "follow-up" else None
        assert bob.api("POST", f"/v1/tasks/{secret}/{action}", json=body).status_code == 404
    admin = browser("root")
    assert "Alice-secret" in admin.page("/").text
    assert admin.page(f"/tasks/{secret}").status_code == 200


def test_state_changing_requests_need_the_sessions_csrf_token(
    browser: Callable[..., Browser], make_task: Callable[..., str], sessions: Any
) -> None:
    alice, bob = browser("alice"), browser("bob")
    task_id = make_task("alice", state=TaskState.running)
    attempts = {
        "missing": {},
        "wrong": {"X-CSRF-Token": "0" * 64},
        "another session's": {"X-CSRF-Token": bob.csrf},
        "right, from another site": {"X-CSRF-Token": alice.csrf, "Sec-Fetch-Site": "cross-site"},
    }
    for name, headers in attempts.items():
        cancel = alice.api("POST", f"/v1/tasks/{task_id}/cancel", csrf=False, headers=headers)
        create = alice.api("POST", "/v1/tasks", csrf=False, headers=headers,
                           json={"repo": "https://github.com/acme/widgets.git", "instruction": "x"})  # fmt: skip
        assert cancel.status_code == create.status_code == 403, name
        assert cancel.json()["error"]["code"] == "csrf_failed"
    with sessions() as session:
        assert session.get(Task, task_id).cancel_requested is False  # type: ignore[union-attr]
        assert len(store.tasks.list_tasks(session, limit=10)[0]) == 1
    assert alice.api("POST", f"/v1/tasks/{task_id}/cancel").status_code == 200
    sign_out = alice.client.post("/sign-out", data={})
    assert sign_out.status_code == 403


def test_forged_cookies_are_refused(
    browser: Callable[..., Browser], sessions: Any, settings: Settings, tokens: dict[str, str]
) -> None:
    alice = browser("alice")
    cookie = session_cookie(alice)
    payload, _, signature = cookie.partition(".")
    with sessions() as session:
        bob_token = session.query(Token).filter(Token.token_hash == store.users.hash_token(tokens["bob"])).one()
        bob_id, bob_hash = bob_token.id, bob_token.token_hash
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    as_bob = base64.urlsafe_b64encode(json.dumps({**claims, "tid": bob_id}).encode()).decode().rstrip("=")
    other_key = SessionCodec(b"k" * 64)
    forged = {
        "another token id, alice's signature": f"{as_bob}.{signature}",
        "signed with another key": other_key.serializer.dumps({"tid": bob_id, "fp": fingerprint(bob_hash), "n": "x"}),
        "right key, wrong fingerprint": SessionCodec(load_session_key(settings.data_dir)).serializer.dumps(
            {"tid": bob_id, "fp": fingerprint("0" * 64), "n": "x"}
        ),
        "garbage": "not-a-cookie",
        "truncated": cookie[:-3],
    }
    for name, value in forged.items():
        client = browser().client
        client.cookies.set(SESSION_COOKIE, value)
        assert client.get("/").status_code == 303, name
        assert client.get("/v1/tasks").status_code == 401, name


def test_revoking_or_expiring_the_token_ends_its_sessions_at_the_next_request(
    browser: Callable[..., Browser], sessions: Any, tokens: dict[str, str], make_task: Callable[..., str]
) -> None:
    alice, bob = browser("alice"), browser("bob")
    task_id = make_task("alice", state=TaskState.running)
    assert alice.page("/").status_code == 200
    with sessions.begin() as session:
        store.users.revoke_tokens(session, user_name="alice")
        row = session.query(Token).filter(Token.token_hash == store.users.hash_token(tokens["bob"])).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
    for who, word in ((alice, "revoked"), (bob, "expired")):
        page = who.page("/")
        assert page.status_code == 303 and word in page.headers["location"]
        answer = who.api("GET", "/v1/tasks")
        assert answer.status_code == 401 and answer.json()["error"]["code"] == f"token_{word}"
    stream = alice.api("GET", f"/v1/tasks/{task_id}/events", headers={"Accept": "text/event-stream"})
    assert stream.status_code == 401


def test_a_session_older_than_a_week_is_refused(browser: Callable[..., Browser], settings: Settings) -> None:
    alice = browser("alice")
    codec = SessionCodec(load_session_key(settings.data_dir))
    claims = codec.read(session_cookie(alice))
    eight_days_ago = utcnow().timestamp() - 8 * 24 * 3600
    with mock.patch("itsdangerous.timed.time.time", return_value=eight_days_ago):
        old = codec.serializer.dumps(claims)
    client = browser().client
    client.cookies.set(SESSION_COOKIE, old)
    assert "expired" in client.get("/").headers["location"]


def test_bearer_requests_are_unchanged_even_with_a_cookie(
    browser: Callable[..., Browser], tokens: dict[str, str], make_task: Callable[..., str]
) -> None:
    """The Authorization header wins over a cookie, and needs no CSRF token (no browser sends it by itself)."""
    bob = browser("bob")
    task_id = make_task("alice", state=TaskState.running)
    bearer = {"Authorization": f"Bearer {tokens['alice']}"}
    answer = bob.api("POST", f"/v1/tasks/{task_id}/cancel", csrf=False, headers=bearer)
    assert answer.status_code == 200
    refused = bob.api("GET", "/v1/tasks", headers={"Authorization": "Bearer ovn_wrong"})
    assert refused.status_code == 401 and refused.json()["error"]["message"] == "the bearer token is not valid"


def test_pages_forbid_framing_and_inline_scripts_and_are_not_cached(browser: Callable[..., Browser]) -> None:
    page = browser("alice").page("/")
    policy = page.headers["content-security-policy"]
    assert (
        "script-src 'self'" in policy
        and "frame-ancestors 'none'" in policy
        and "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]
    )
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"


def test_markup_in_task_data_is_shown_as_text(browser: Callable[..., Browser], make_task: Callable[..., str]) -> None:
    attack = "<script>alert(1)</script></script><img src=x onerror=alert(2)>"
    task_id = make_task("alice", instruction=attack, repo="https://github.com/acme/<b>x</b>.git")
    alice = browser("alice")
    for path in ["/", f"/tasks/{task_id}"]:
        text = alice.page(path).text
        assert "<script>alert" not in text and "<img src=x" not in text and "&lt;script&gt;" in text
    # The page's events travel as JSON inside a script element: nothing in them may end it early.
    assert "</script><img" not in alice.page(f"/tasks/{task_id}").text


def test_the_session_key_is_private_and_survives_a_restart(
    settings: Settings, tokens: dict[str, str], browser: Callable[..., Browser]
) -> None:
    alice = browser("alice")
    key_file = Path(settings.data_dir) / KEY_FILE
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    restarted = TestClient(create_app(settings), follow_redirects=False)
    restarted.cookies.set(SESSION_COOKIE, session_cookie(alice))
    assert restarted.get("/").status_code == 200


def test_sign_out_needs_the_session_and_its_token_and_touches_nothing_else(
    browser: Callable[..., Browser],
) -> None:
    stranger = browser().client.post("/sign-out", data={})
    assert stranger.status_code == 303 and "set-cookie" not in stranger.headers  # a page elsewhere: no cookie sent
    alice = browser("alice")
    signed_out = alice.client.post("/sign-out", data={"csrf_token": alice.csrf})
    assert signed_out.status_code == 303 and f'{SESSION_COOKIE}=""' in signed_out.headers["set-cookie"]
    assert alice.page("/").status_code == 303


def test_the_sign_in_page_says_only_its_own_words(browser: Callable[..., Browser]) -> None:
    client = browser().client
    assert "was revoked" in client.get("/sign-in?reason=token_revoked").text
    lure = client.get("/sign-in?reason=Overnight+moved+to+https://evil.example")
    assert "evil.example" not in lure.text


def test_api_answers_to_the_pages_are_never_cached(
    browser: Callable[..., Browser], make_task: Callable[..., str], tokens: dict[str, str]
) -> None:
    task_id = make_task("alice", state=TaskState.succeeded, diff=DIFF)
    alice = browser("alice")
    for path in ["/v1/tasks", f"/v1/tasks/{task_id}", f"/v1/tasks/{task_id}/patch?format=diff"]:
        assert alice.api("GET", path).headers["cache-control"] == "no-store", path
    bearer = browser().client.get(f"/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {tokens['alice']}"})
    assert bearer.status_code == 200 and "cache-control" not in bearer.headers  # the bearer API is as it was


def test_the_api_documentation_is_served_from_here_under_the_policy(browser: Callable[..., Browser]) -> None:
    client = browser().client
    docs = client.get("/docs")
    assert docs.status_code == 200 and "script-src 'self'" in docs.headers["content-security-policy"]
    assert "/static/vendor/swagger-ui-bundle.js" in docs.text and "cdn." not in docs.text
    assert client.get("/redoc").status_code == 404
