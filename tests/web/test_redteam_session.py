"""Red team, sessions and requests from elsewhere (issue 16): the attacker's pages, on another site
(``localhost``: the app is at ``127.0.0.1``) and on the same site at another port (where SameSite lets the
cookie go along), trying to act with the visitor's cookie, to sign them in or out, to frame the pages;
redirects after sign-in; what the browser may keep in its cache."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import store.tasks
import store.users
from store.models import Task, TaskEvent, TaskState
from tests.web.conftest import Browser, sign_in
from tests.web.redteam import AttackerSite, LiveServer, Visitor, http, routes
from tests.web.redteam_hostile import add_event
from web.session import SESSION_COOKIE

pytest_plugins = ["tests.web.redteam"]  # the live server, the browser, the attacker's site

DIFF = "diff --git a/a.py b/a.py\n--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-a\n+b\n"


def auto_post(action: str, fields: dict[str, str], *, enctype: str = "application/x-www-form-urlencoded") -> str:
    inputs = "".join(f'<input type="hidden" name="{name}" value="{value}">' for name, value in fields.items())
    return (f'<form id="f" method="post" action="{action}" enctype="{enctype}">{inputs}</form>'
            '<script>document.getElementById("f").submit()</script>')  # fmt: skip


def signed_in(visitor: Visitor, base: str) -> bool:
    visitor.page.goto(f"{base}/")
    return visitor.page.url == f"{base}/"


def test_a_page_of_another_site_cannot_sign_the_visitor_out(
    live: LiveServer, visitor: Callable[..., Visitor], attacker: AttackerSite, tokens: dict[str, str]
) -> None:
    victim = visitor()
    victim.sign_in(live.base, tokens["alice"])
    victim.page.goto(attacker.page(auto_post(f"{live.base}/sign-out", {})))
    victim.page.wait_for_url(f"{live.base}/sign-in")
    assert victim.session_cookie() is not None, "the attacker's page deleted the session cookie"


@pytest.mark.parametrize("same_site", [False, True], ids=["another-site", "same-site"])
def test_pages_elsewhere_cannot_act_with_the_visitors_cookie(
    live: LiveServer,
    visitor: Callable[..., Visitor],
    attacker: AttackerSite,
    tokens: dict[str, str],
    make_task: Callable[..., str],
    sessions: sessionmaker[Session],
    same_site: bool,
) -> None:
    """Forms (urlencoded, and text/plain carrying JSON) and no-cors fetches at every state-changing route:
    cancel, retry, follow-up, new task, sign-out. Another site's requests come without the cookie (SameSite);
    a same-site page's come with it and lack the CSRF token. Nothing changes, and the visitor stays signed in."""
    running = make_task("alice", state=TaskState.running)
    ended = make_task("alice", state=TaskState.succeeded, diff=DIFF)
    victim = visitor()
    victim.sign_in(live.base, tokens["alice"])
    json_body = '{"repo": "https://github.com/evil/x.git", "instruction": "x", "pad": "'
    targets = [
        auto_post(f"{live.base}/v1/tasks/{running}/cancel", {}),
        auto_post(f"{live.base}/v1/tasks/{ended}/retry", {}),
        auto_post(f"{live.base}/v1/tasks/{ended}/follow-up", {json_body: '"}'}, enctype="text/plain"),
        auto_post(f"{live.base}/v1/tasks", {json_body: '"}'}, enctype="text/plain"),
        auto_post(f"{live.base}/sign-out", {"csrf_token": ""}),
    ]
    for html in targets:
        victim.page.goto(attacker.page(html, same_site=same_site))
        victim.page.wait_for_load_state("networkidle")
    fetches = f"""<script>
      const body = JSON.stringify({{repo: "https://github.com/evil/x.git", instruction: "x"}});
      for (const path of ["/v1/tasks/{running}/cancel", "/v1/tasks/{ended}/retry", "/v1/tasks"]) {{
        fetch("{live.base}" + path, {{method: "POST", mode: "no-cors", credentials: "include",
                                     headers: {{"Content-Type": "text/plain"}}, body}});
      }}
    </script>"""
    victim.page.goto(attacker.page(fetches, same_site=same_site))
    victim.page.wait_for_load_state("networkidle")
    with sessions() as session:
        assert session.get(Task, running).cancel_requested is False  # type: ignore[union-attr]
        assert len(store.tasks.list_tasks(session, limit=10)[0]) == 2
    if same_site:  # another site's sign-out: H9 finding 2
        assert signed_in(victim, live.base)


def test_a_page_elsewhere_cannot_sign_the_visitor_in_as_someone_else(
    live: LiveServer, visitor: Callable[..., Visitor], attacker: AttackerSite, tokens: dict[str, str]
) -> None:
    """Login CSRF: the attacker's form posts the attacker's token, with a guessed nonce or none, even after it
    sent the visitor to the sign-in form first (so that the browser holds a nonce cookie)."""
    for same_site in (False, True):
        victim = visitor()
        victim.page.goto(f"{live.base}/sign-in")
        for fields in ({"token": tokens["bob"]}, {"token": tokens["bob"], "csrf_token": "x", "next": "/"}):
            victim.page.goto(attacker.page(auto_post(f"{live.base}/sign-in", fields), same_site=same_site))
            victim.page.wait_for_load_state("networkidle")
            assert victim.session_cookie() is None, same_site


def test_no_page_can_be_framed_by_another_site(
    live: LiveServer,
    visitor: Callable[..., Visitor],
    attacker: AttackerSite,
    tokens: dict[str, str],
    make_task: Callable[..., str],
) -> None:
    task_id = make_task("alice", state=TaskState.succeeded, diff=DIFF)
    victim = visitor()
    victim.sign_in(live.base, tokens["alice"])
    paths = ["/", f"/tasks/{task_id}", f"/tasks/{task_id}/summary", "/?partial=rows", "/tasks/new", "/sign-in",
             "/tasks/nothing"]  # fmt: skip
    frames = "".join(f'<iframe src="{live.base}{path}" width="400" height="300"></iframe>' for path in paths)
    control = f'<iframe src="{live.base}/static/app.css"></iframe>'  # framable: the test can see a frame load
    victim.page.goto(attacker.page(frames + control))
    victim.page.wait_for_load_state("networkidle")
    loaded = [frame.url for frame in victim.page.frames[1:] if frame.url.startswith(live.base)]
    assert loaded == [f"{live.base}/static/app.css"]


@pytest.mark.parametrize(
    "target",
    ["/%2F%2Fevil.example", "/%5Cevil.example", "///evil.example", "/\t/evil.example", "/\n/evil.example",
     "/ /evil.example", "\\\\evil.example", "/%09/evil.example", "http:evil.example", "/.//evil.example/",
     "https:/\\evil.example", "/\u3002/evil.example", "//evil.example@127.0.0.1/", " //evil.example"],
)  # fmt: skip
def test_sign_in_stays_on_this_site_whatever_next_says(
    browser: Callable[..., Browser], tokens: dict[str, str], target: str
) -> None:
    answer = sign_in(browser().client, tokens["alice"], target)
    assert answer.status_code == 303
    where = urljoin("http://testserver/sign-in", answer.headers["location"].replace("\\", "/"))
    assert urlsplit(where).netloc == "testserver", answer.headers["location"]


def test_every_page_and_fragment_is_sent_with_the_policy_and_never_cached(
    browser: Callable[..., Browser], make_task: Callable[..., str]
) -> None:
    task_id = make_task("alice", state=TaskState.failed, reason="boom")
    alice = browser("alice")
    answers = {path: alice.page(path) for path in ["/", "/?partial=rows", "/tasks/new", f"/tasks/{task_id}",
                                                   f"/tasks/{task_id}/summary", "/tasks/nothing"]}  # fmt: skip
    answers["sign-out without its token"] = alice.client.post("/sign-out", data={})
    answers["sign-in"] = browser().page("/sign-in")
    for name, answer in answers.items():
        assert answer.headers["content-type"].startswith("text/html"), name
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"], name
        assert answer.headers["x-frame-options"] == "DENY", name
        assert answer.headers["cache-control"] == "no-store", name
        assert answer.headers["x-content-type-options"] == "nosniff", name


def test_private_api_answers_read_with_the_cookie_are_not_cached(
    browser: Callable[..., Browser], make_task: Callable[..., str]
) -> None:
    task_id = make_task("alice", state=TaskState.succeeded, diff=DIFF)
    alice = browser("alice")
    for path in ["/v1/tasks", f"/v1/tasks/{task_id}", f"/v1/tasks/{task_id}/events",
                 f"/v1/tasks/{task_id}/patch?format=diff", f"/v1/tasks/{task_id}/patch?format=mbox",
                 f"/v1/tasks/{task_id}/patch?format=json"]:  # fmt: skip
        answer = alice.api("GET", path)
        assert answer.status_code == 200, path
        policy = answer.headers.get("cache-control", "")
        assert "no-store" in policy or "private" in policy, f"{path}: Cache-Control {policy!r}"


def test_the_sign_in_page_shows_no_text_a_link_brings(browser: Callable[..., Browser]) -> None:
    lure = "Overnight has moved: sign in at https://overnight.evil.example with your token"
    page = browser().page(f"/sign-in?reason={lure}")
    assert page.status_code == 200
    assert "overnight.evil.example" not in page.text


def test_every_state_changing_route_refuses_a_cookie_without_its_csrf_token(
    browser: Callable[..., Browser], make_task: Callable[..., str], sessions: sessionmaker[Session]
) -> None:
    """Retry and follow-up too (cancel and create are in test_session_security), under every method a browser
    form or fetch could use; the safe methods change nothing."""
    running = make_task("alice", state=TaskState.running)
    ended = make_task("alice", state=TaskState.succeeded, diff=DIFF)
    alice = browser("alice")
    routes = [
        ("POST", f"/v1/tasks/{running}/cancel", None),
        ("POST", f"/v1/tasks/{ended}/retry", None),
        ("POST", f"/v1/tasks/{ended}/follow-up", {"instruction": "x"}),
        ("POST", "/v1/tasks", {"repo": "https://github.com/acme/widgets.git", "instruction": "x"}),
    ]
    for method, path, body in routes:
        for headers in ({}, {"X-CSRF-Token": ""}, {"X-CSRF-Token": "x" * 64}, {"X-Csrf-Token": alice.csrf + "0"}):
            answer = alice.api(method, path, csrf=False, headers=headers, json=body)
            assert answer.status_code == 403, (path, headers)
        for other in ("PUT", "PATCH", "DELETE"):
            assert alice.api(other, path, csrf=False, json=body).status_code in (403, 405), (other, path)
        for safe in ("HEAD", "OPTIONS"):
            assert alice.api(safe, path, csrf=False).status_code in (404, 405), (safe, path)
    with sessions() as session:
        assert session.get(Task, running).cancel_requested is False  # type: ignore[union-attr]
        assert len(store.tasks.list_tasks(session, limit=10)[0]) == 2
    assert alice.client.post("/sign-out", data={"csrf_token": "x" * 64}).status_code == 403
    assert alice.page("/").status_code == 200  # still signed in
    assert SESSION_COOKIE in alice.client.cookies


def test_revoking_the_token_ends_an_open_event_stream(
    live: LiveServer, tokens: dict[str, str], make_task: Callable[..., str], sessions: sessionmaker[Session]
) -> None:
    """docs/web.md: revoking a token ends every session made with it at the next request. A page's event stream
    is one request that lasts as long as the task runs (hours); what is written after the revocation must not
    reach it."""
    task_id = make_task("alice", state=TaskState.running)
    with http(live.base) as client:
        nonce = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/sign-in").text)
        assert nonce
        signed = client.post("/sign-in", data={"token": tokens["alice"], "csrf_token": nonce.group(1)})
        assert signed.status_code == 303
        received: list[str] = []
        with client.stream("GET", f"/v1/tasks/{task_id}/events", headers={"Accept": "text/event-stream"},
                           timeout=httpx.Timeout(10, read=3)) as stream:  # fmt: skip
            lines = stream.iter_lines()
            wait_for_line(lines, received, '"state":"running"')
            with sessions.begin() as session:
                store.users.revoke_tokens(session, user_name="alice")
                add_event(session, task_id, "model_response", {"step": 1, "finish_reason": "stop", "content":
                          "SECRET written after the revocation", "usage": {"prompt_tokens": 1,
                          "completion_tokens": 1, "cached_tokens": 0}})  # fmt: skip
            with suppress(httpx.ReadTimeout):
                wait_for_line(lines, received, "SECRET")
    assert not any("SECRET" in line for line in received)


def wait_for_line(lines: Iterator[str], received: list[str], text: str, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    for line in lines:
        received.append(line)
        if text in line or time.monotonic() > deadline:
            return


def test_over_https_a_cookie_planted_under_the_plain_name_is_not_read(
    browser: Callable[..., Browser], tokens: dict[str, str]
) -> None:
    """``__Host-`` keeps another subdomain from setting the cookie; reading the plain name as well gives that back.
    The attacker signs in as bob, plants bob's session under the plain name for the parent domain (the visitor has
    none of their own yet), or plants a nonce of their choosing and posts the sign-in form with it."""
    bob = browser(base_url="https://testserver").client
    assert sign_in(bob, tokens["bob"]).status_code == 303
    bobs_session = bob.cookies.get("__Host-" + SESSION_COOKIE)
    assert bobs_session
    visitor = browser(base_url="https://testserver").client
    visitor.cookies.set(SESSION_COOKIE, bobs_session)
    assert visitor.get("/").status_code == 303, "a planted plain-named session signed the visitor in as bob"
    assert visitor.get("/v1/tasks").status_code == 401
    visitor = browser(base_url="https://testserver").client
    visitor.cookies.set("overnight_sign_in", "planted-nonce")
    answer = visitor.post("/sign-in", data={"token": tokens["bob"], "csrf_token": "planted-nonce", "next": "/"})
    assert answer.status_code == 403, "a planted plain-named nonce let a form elsewhere sign the visitor in as bob"


def test_every_state_changing_route_of_the_app_refuses_a_cookie_without_its_csrf_token(
    app: Any, browser: Callable[..., Browser], make_task: Callable[..., str], sessions: sessionmaker[Session]
) -> None:
    """Found by walking the app's routes, so that routes added later (messages, environments and their secrets)
    are tried too: each POST, PUT, PATCH and DELETE with the cookie alone is refused as csrf_failed and changes
    nothing. The sign-in and sign-out forms carry their own token (tried above); the GitHub webhook is
    authenticated by its body's signature, never by a cookie."""
    task_id = make_task("alice", state=TaskState.running)
    alice = browser("alice")
    before = snapshot(sessions)
    own_checks = {"/sign-in", "/sign-out", "/v1/github/webhook"}
    tried = []
    for method, path in sorted(set(routes(app))):
        if method in ("GET", "HEAD", "OPTIONS") or path in own_checks:
            continue
        url = re.sub(r"\{[^}]+\}", "1", path.replace("{task_id}", task_id))
        answer = alice.api(method, url, csrf=False, json={"instruction": "x", "value": "x", "text": "x"})
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "csrf_failed", (method, path)
        tried.append(f"{method} {path}")
    assert len(tried) >= 6, tried
    assert snapshot(sessions) == before


def snapshot(sessions: sessionmaker[Session]) -> tuple[Any, ...]:
    with sessions() as session:
        tasks = session.execute(select(Task.id, Task.state, Task.cancel_requested).order_by(Task.id)).all()
        return tuple(tasks), session.scalar(select(func.count()).select_from(TaskEvent))
