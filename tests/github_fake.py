"""A local stand-in for GitHub's REST API (github.com cannot be reached from here): an ASGI app on a loopback
port that checks what GitHub checks — the App JWT (RS256, verified with the App's public key, iss, iat, exp
under ten minutes), installation tokens and their expiry, the personal token — records every call, and
answers with GitHub's documented shapes and error bodies. Failure modes are switches on the instance."""

from __future__ import annotations

import itertools
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.testclient import TestClient

from overnight.github.webhooks import sign
from overnight.loopback import LoopbackServer
from overnight.settings import GitHubSettings, Settings
from store.engine import make_engine, migrate

FIXTURES = Path(__file__).parent / "fixtures" / "github"
SECRET = "It's a Secret to Everybody"
INSTALLATION = 957387
"""The id in the recorded installation.created delivery."""
BAD_CREDENTIALS = {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}
NOT_FOUND = {"message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404"}
BASE_ROLE = {"admin": "admin", "maintain": "write", "write": "write", "triage": "read", "read": "read", "none": "none"}
"""role_name → the legacy ``permission`` GitHub reports with it (maintain counts as write, triage as read)."""


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "webhooks" / name).read_text())  # type: ignore[no-any-return]


def rest_fixture(name: str) -> list[dict[str, Any]]:
    return json.loads((FIXTURES / "rest" / name).read_text())  # type: ignore[no-any-return]


def new_private_key() -> tuple[str, str]:
    """A fresh RSA key pair for a test App: (private PEM, public PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


KEYS = new_private_key()
"""The test App's key pair (private, public)."""


def deliver(
    client: TestClient, event: str, payload: Any, *, delivery: str | None = None, secret: str | None = SECRET
) -> Any:
    body = json.dumps(payload).encode()
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
               "Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/044aadd"}  # fmt: skip
    if secret is not None:
        headers["X-Hub-Signature-256"] = sign(secret.encode(), body)
    return client.post("/v1/github/webhook", content=body, headers=headers)


_EVENTS = itertools.count(1)


def labeled(label: str = "overnight") -> dict[str, Any]:
    """A new labelling of the recorded issue: GitHub moves the issue's ``updated_at`` with each one."""
    payload = fixture("issues.labeled.json")
    payload["label"]["name"] = label
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uOTU3Mzg3"}
    labelled_at = datetime(2019, 5, 15, 15, 20, 18, tzinfo=UTC) + timedelta(seconds=next(_EVENTS))
    payload["issue"]["updated_at"] = labelled_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return payload


def command(body: str, association: str = "OWNER") -> dict[str, Any]:
    """A new comment on the recorded issue (a comment id of its own)."""
    payload = fixture("issue_comment.created.with-installation.json")
    payload["installation"]["id"] = INSTALLATION
    payload["comment"]["id"] += next(_EVENTS)
    payload["comment"]["body"] = body
    payload["comment"]["author_association"] = association
    return payload


@dataclass
class Call:
    method: str
    path: str
    auth: str
    body: Any


@dataclass
class FakeGitHub:
    app_id: str = "4242"
    public_key: str | None = None
    personal_token: str | None = None
    installations: set[int] = field(default_factory=set)
    token_lifetime: float = 3600.0
    calls: list[Call] = field(default_factory=list)
    tokens: dict[str, tuple[int, float]] = field(default_factory=dict)
    comments: dict[int, dict[str, Any]] = field(default_factory=dict)
    pulls: list[dict[str, Any]] = field(default_factory=list)
    reactions: list[tuple[str, str]] = field(default_factory=list)
    labels_removed: list[tuple[str, int, str]] = field(default_factory=list)
    pull_failure: tuple[int, dict[str, Any]] | None = None
    """Answer every POST /pulls with this (status, body)."""
    drafts_supported: bool = True
    failures_before_success: int = 0
    """Answer this many REST calls with a secondary rate limit (403 + retry-after) first."""
    roles: dict[str, str] = field(default_factory=dict)
    """login → role_name on every repository (admin, maintain, write, triage, read, none, or a custom role);
    by default a repository's owner is admin and everyone else can read (a public repository)."""
    custom_roles: dict[str, str] = field(default_factory=dict)
    """A custom repository role's name → the base role it inherits."""
    unknown_users: set[str] = field(default_factory=set)
    """Logins GitHub does not know (their permission is a 404)."""
    token_login: str = "Codertocat"
    """Whose personal token ``personal_token`` is (GET /user)."""
    attachments: dict[str, bytes] = field(default_factory=dict)
    """Files of GET /user-attachments/assets/{id} (a private repository's: a valid token or 404, as GitHub)."""
    _next_id: int = 1000

    def calls_to(self, method: str, fragment: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and fragment in c.path]

    def revoke_all_tokens(self) -> None:
        self.tokens.clear()

    # --- checks ---------------------------------------------------------------------------------------

    def _jwt_ok(self, auth: str) -> bool:
        if self.public_key is None or not auth.startswith("Bearer "):
            return False
        try:
            claims = jwt.decode(auth.removeprefix("Bearer "), self.public_key, algorithms=["RS256"],
                                options={"require": ["iat", "exp", "iss"]})  # fmt: skip
        except jwt.PyJWTError:
            return False
        now = time.time()
        return bool(claims["iss"] == self.app_id and claims["iat"] <= now and claims["exp"] - claims["iat"] <= 600)

    def _token_ok(self, auth: str) -> bool:
        token = auth.removeprefix("Bearer ").removeprefix("token ")
        if self.personal_token is not None and token == self.personal_token:
            return True
        issued = self.tokens.get(token)
        return issued is not None and issued[1] > time.time()

    def _permission(self, owner: str, login: str) -> Any:
        """GET /repos/{owner}/{repo}/collaborators/{username}/permission, in GitHub's shape."""
        if login.lower() in {name.lower() for name in self.unknown_users}:
            return JSONResponse(NOT_FOUND, status_code=404)
        roles = {name.lower(): role for name, role in self.roles.items()}
        role = roles.get(login.lower(), "admin" if login.lower() == owner.lower() else "read")
        base = BASE_ROLE.get(role) or BASE_ROLE[self.custom_roles[role]]
        inherited = role if role in BASE_ROLE else self.custom_roles[role]
        order = ["none", "read", "triage", "write", "maintain", "admin"]
        rank = order.index(inherited)
        flags = {"pull": rank >= 1, "triage": rank >= 2, "push": rank >= 3, "maintain": rank >= 4, "admin": rank >= 5}
        user = {"login": login, "id": 583231, "node_id": "MDQ6VXNlcjU4MzIzMQ==",
                "avatar_url": "https://avatars.githubusercontent.com/u/583231?v=4", "gravatar_id": "",
                "url": f"https://api.github.com/users/{login}", "html_url": f"https://github.com/{login}",
                "type": "User", "site_admin": False, "permissions": flags, "role_name": role,
                "user_view_type": "public"}  # fmt: skip
        return {"permission": base, "role_name": role, "user": user}

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    # --- the app --------------------------------------------------------------------------------------

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def record(request: Request, call_next: Any) -> Any:
            raw = await request.body()
            body = json.loads(raw) if raw else None
            self.calls.append(Call(request.method, request.url.path, request.headers.get("authorization", ""), body))
            if request.url.path.startswith("/repos/"):
                if not self._token_ok(request.headers.get("authorization", "")):
                    return JSONResponse(BAD_CREDENTIALS, status_code=401)
                if self.failures_before_success > 0:
                    self.failures_before_success -= 1
                    message = ("You have exceeded a secondary rate limit. Please wait a few minutes before you "
                               "try again.")  # fmt: skip
                    return JSONResponse({"message": message}, status_code=403, headers={"retry-after": "1"})
            return await call_next(request)

        @app.post("/app/installations/{installation_id}/access_tokens", status_code=201)
        def access_token(installation_id: int, request: Request) -> Any:
            if not self._jwt_ok(request.headers.get("authorization", "")):
                return JSONResponse({"message": "A JSON web token could not be decoded"}, status_code=401)
            if installation_id not in self.installations:
                return JSONResponse({"message": "Not Found"}, status_code=404)
            token = "ghs_" + secrets.token_hex(18)
            expires = time.time() + self.token_lifetime
            self.tokens[token] = (installation_id, expires)
            stamp = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return {"token": token, "expires_at": stamp, "permissions": {"issues": "write", "contents": "write",
                    "pull_requests": "write"}, "repository_selection": "selected"}  # fmt: skip

        @app.get("/app/installations/{installation_id}")
        def installation(installation_id: int, request: Request) -> Any:
            if not self._jwt_ok(request.headers.get("authorization", "")):
                return JSONResponse({"message": "A JSON web token could not be decoded"}, status_code=401)
            if installation_id not in self.installations:
                return JSONResponse({"message": "Not Found"}, status_code=404)
            found = dict(fixture("installation.created.json")["installation"])
            return {**found, "id": installation_id, "app_id": int(self.app_id)}

        @app.get("/app")
        def the_app(request: Request) -> Any:
            if not self._jwt_ok(request.headers.get("authorization", "")):
                return JSONResponse({"message": "A JSON web token could not be decoded"}, status_code=401)
            return {"id": int(self.app_id), "slug": "overnight-test", "name": "Overnight (test)",
                    "owner": {"login": "Codertocat", "type": "User"}}  # fmt: skip

        @app.get("/user")
        def the_user(request: Request) -> Any:
            if not self._token_ok(request.headers.get("authorization", "")):
                return JSONResponse(BAD_CREDENTIALS, status_code=401)
            return {"login": self.token_login, "id": 21031067, "type": "User", "site_admin": False}

        @app.get("/repos/{owner}/{repo}/collaborators/{username}/permission")
        def permission(owner: str, repo: str, username: str) -> Any:
            return self._permission(owner, username)

        @app.get("/user-attachments/assets/{asset}")
        def attachment(asset: str, request: Request) -> Any:
            if asset not in self.attachments or not self._token_ok(request.headers.get("authorization", "")):
                return JSONResponse(NOT_FOUND, status_code=404)
            return Response(self.attachments[asset], media_type="image/png")

        @app.post("/repos/{owner}/{repo}/issues/{number}/comments", status_code=201)
        def comment(owner: str, repo: str, number: int, body: dict[str, Any]) -> Any:
            comment_id = self._id()
            self.comments[comment_id] = {"repo": f"{owner}/{repo}", "number": number, "body": body["body"],
                                         "edits": 0}  # fmt: skip
            url = f"https://github.com/{owner}/{repo}/issues/{number}#issuecomment-{comment_id}"
            return {"id": comment_id, "body": body["body"], "html_url": url,
                    "user": {"login": "overnight[bot]", "type": "Bot"}}  # fmt: skip

        @app.patch("/repos/{owner}/{repo}/issues/comments/{comment_id}")
        def edit_comment(owner: str, repo: str, comment_id: int, body: dict[str, Any]) -> Any:
            if comment_id not in self.comments:
                return JSONResponse({"message": "Not Found"}, status_code=404)
            self.comments[comment_id]["body"] = body["body"]
            self.comments[comment_id]["edits"] += 1
            return {"id": comment_id, "body": body["body"]}

        @app.post("/repos/{owner}/{repo}/{kind}/{rest:path}/reactions", status_code=201)
        def react(owner: str, repo: str, kind: str, rest: str, body: dict[str, Any]) -> Any:
            self.reactions.append((f"{kind}/{rest}", body["content"]))
            return {"id": self._id(), "content": body["content"]}

        @app.delete("/repos/{owner}/{repo}/issues/{number}/labels/{name}")
        def remove_label(owner: str, repo: str, number: int, name: str) -> Any:
            self.labels_removed.append((f"{owner}/{repo}", number, name))
            return []

        @app.post("/repos/{owner}/{repo}/pulls", status_code=201)
        def create_pull(owner: str, repo: str, body: dict[str, Any]) -> Any:
            if self.pull_failure is not None:
                return JSONResponse(self.pull_failure[1], status_code=self.pull_failure[0])
            if body.get("draft") and not self.drafts_supported:
                return JSONResponse({"message": "Draft pull requests are not supported in this repository."},
                                    status_code=422)  # fmt: skip
            if any(p["head"]["ref"] == body["head"] for p in self.pulls):
                message = f"A pull request already exists for {owner}:{body['head']}."
                return JSONResponse({"message": "Validation Failed", "errors": [{"resource": "PullRequest",
                                     "code": "custom", "message": message}]}, status_code=422)  # fmt: skip
            number = len(self.pulls) + 1
            pull = {"number": number, "html_url": f"https://github.com/{owner}/{repo}/pull/{number}",
                    "state": "open", "draft": bool(body.get("draft")), "title": body["title"], "body": body["body"],
                    "head": {"ref": body["head"]}, "base": {"ref": body["base"]}}  # fmt: skip
            self.pulls.append(pull)
            return pull

        return app


class FakeGitHubServer(LoopbackServer):
    """Runs a ``FakeGitHub`` on a free loopback port in a background thread."""

    def __init__(self, fake: FakeGitHub) -> None:
        super().__init__(fake.app(), name="fake GitHub")
        self.fake = fake


def app_settings(tmp_path: Path, redis_url: str, api_url: str, queue_prefix: str) -> Iterator[Settings]:
    """Settings of an Overnight speaking to the fake GitHub at ``api_url`` as the App, on a migrated database and a
    queue of its own (emptied afterwards): what the webhook tests' ``settings`` fixtures yield from."""
    settings = Settings(
        data_dir=tmp_path, broker_url=redis_url, queue=f"{queue_prefix}-{secrets.token_hex(4)}",
        allow_local_repos=True,
        github=GitHubSettings(webhook_secret=SECRET, app_id="4242", private_key=KEYS[0], api_url=api_url,
                              git_url=str(tmp_path / "git")),  # type: ignore[arg-type]
    )  # fmt: skip
    migrate(make_engine(settings.resolved_database_url))
    yield settings
    redis.Redis.from_url(redis_url).delete(settings.queue)
