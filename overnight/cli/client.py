"""The HTTP client the CLI uses; it speaks to the API only."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx
from httpx_sse import connect_sse

from overnight.cli.errors import ClientError
from overnight.cli.images import ImagePart
from overnight.cli.settings import ClientSettings


def _tls_for(server: str) -> ssl.SSLContext | bool:
    """httpx's default (certifi's bundle, or SSL_CERT_FILE/SSL_CERT_DIR) for an https:// server; for plain
    http://, a strict context with no CA at all: loading a bundle there costs a tenth of a second of start-up
    for nothing, and a redirect to https then fails verification instead of going unverified."""
    if server.lower().startswith("https://"):
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default


FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
# The fields the CLI reads from each kind of answer (the rest is passed through untouched): a server, or a proxy
# in front of it, that answers anything else gets a one-line error instead of a traceback.
TASK: dict[str, type] = {"id": str, "state": str, "repo": str, "instruction": str, "created_at": str}
EVENT: dict[str, type] = {"seq": int, "type": str, "data": dict, "created_at": str}
PATCH: dict[str, type] = {"base_sha": str, "files_changed": int}
MESSAGE: dict[str, type] = {"id": int, "task_id": str, "mode": str, "state": str, "text": str}
ATTEMPT: dict[str, type] = {"attempt": int, "task_id": str, "state": str, "best": bool}
_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}  # fmt: skip


def _mismatch(value: Any, fields: dict[str, type]) -> str | None:
    """What keeps ``value`` from being an object with these fields (None: nothing does)."""
    if not isinstance(value, dict):
        return f"{_JSON_KINDS.get(type(value), 'something')} where an object was expected"
    for key, kind in fields.items():
        if type(value.get(key)) is not kind:  # `is`: a boolean is not a number here
            return f"no {_JSON_KINDS[kind].split()[-1]} {key!r} in {_snippet(json.dumps(value))}"
    return None


def _snippet(text: str, limit: int = 80) -> str:
    """A piece of a body on one line, quoted."""
    return repr(text[:limit] + ("…" if len(text) > limit else ""))


class UnexpectedAnswer(ClientError):
    """The server answered, but not the way Overnight's API does (exit 3)."""


class _Unavailable(Exception):
    """A gateway in front of the server answered 502/503/504: it is restarting; try again."""


class APIClient:
    def __init__(self, settings: ClientSettings, *, timeout: float = 30.0) -> None:
        headers = {"user-agent": "overnight-cli"}
        if settings.token is not None:
            headers["authorization"] = f"Bearer {settings.token.get_secret_value()}"
        self.server = settings.server
        try:
            self._http = httpx.Client(base_url=settings.server, headers=headers, timeout=timeout,
                                      verify=_tls_for(settings.server))  # fmt: skip
        except httpx.InvalidURL as exc:
            raise ClientError(f"the server address {settings.server!r} is not a URL: {exc}", exit_code=2) from exc

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach the Overnight server at {self.server}: {exc}", exit_code=3) from exc
        except httpx.RequestError as exc:  # an undecodable body, too many redirects
            raise ClientError(f"{method} {path} on {self.server} failed: {exc}", exit_code=3) from exc
        except httpx.InvalidURL as exc:
            raise ClientError(f"{method} {path}: {exc}", exit_code=2) from exc
        if response.status_code >= 400:
            # 3: the server is down or refuses the token; 2: it refused the request (no such task, bad input).
            code = 3 if response.status_code in (401, 403) or response.status_code >= 500 else 2
            raise ClientError(_error_message(response), exit_code=code, status=response.status_code)
        return response

    def _unexpected(self, response: httpx.Response, what: str) -> UnexpectedAnswer:
        request = response.request
        return UnexpectedAnswer(f"unexpected answer from {self.server} to {request.method} {request.url.path} "
                           f"(HTTP {response.status_code}): {what}", exit_code=3)  # fmt: skip

    def _json(self, response: httpx.Response, fields: dict[str, type]) -> dict[str, Any]:
        try:
            value = response.json()
        except ValueError:  # not JSON, or not UTF-8
            raise self._unexpected(response, f"not JSON: {_snippet(response.text)}") from None
        problem = _mismatch(value, fields)
        if problem:
            raise self._unexpected(response, problem)
        return value  # type: ignore[no-any-return]

    def _items(self, response: httpx.Response, key: str, fields: dict[str, type]) -> list[dict[str, Any]]:
        items: list[Any] = self._json(response, {key: list})[key]
        for item in items:
            problem = _mismatch(item, fields)
            if problem:
                raise self._unexpected(response, f"in {key!r}: {problem}")
        return items

    def create_task(self, body: dict[str, Any], images: list[ImagePart] | None = None) -> dict[str, Any]:
        """JSON, or with ``images`` a multipart form: the body as its ``task`` part, each image a file part."""
        if not images:
            return self._json(self.request("POST", "/v1/tasks", json=body), TASK)
        form = {"task": json.dumps(body)}
        return self._json(self.request("POST", "/v1/tasks", data=form, files=images, timeout=120), TASK)

    def get_task(self, task_id: str) -> dict[str, Any]:
        return self._json(self.request("GET", f"/v1/tasks/{task_id}"), TASK)

    def list_tasks(self, **params: Any) -> list[dict[str, Any]]:
        params = {key: value for key, value in params.items() if value is not None}
        return self._items(self.request("GET", "/v1/tasks", params=params), "tasks", TASK)

    def whoami(self) -> None:
        """Raises ClientError (exit 3) when the server is down, refuses the token, or is not Overnight's API."""
        self._items(self.request("GET", "/v1/tasks", params={"limit": 1}), "tasks", TASK)

    def events(self, task_id: str, after: int = 0) -> list[dict[str, Any]]:
        response = self.request("GET", f"/v1/tasks/{task_id}/events", params={"after": after})
        return self._items(response, "events", EVENT)

    def patch(self, task_id: str, fmt: str = "diff", *, attempt: int | None = None) -> str:
        params = {"format": fmt, **({"attempt": attempt} if attempt else {})}
        return self.request("GET", f"/v1/tasks/{task_id}/patch", params=params).text

    def patch_json(self, task_id: str, *, attempt: int | None = None) -> dict[str, Any]:
        params = {"format": "json", **({"attempt": attempt} if attempt else {})}
        return self._json(self.request("GET", f"/v1/tasks/{task_id}/patch", params=params), PATCH)

    def attempts(self, task_id: str) -> list[dict[str, Any]]:
        """A task's best-of-N attempts, by K, with their ranks once ranked."""
        return self._items(self.request("GET", f"/v1/tasks/{task_id}/attempts"), "attempts", ATTEMPT)

    def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST to a task's action (cancel, retry, follow-up); the answer is a task."""
        return self._json(self.request("POST", path, json=body), TASK)

    def follow_events(self, task_id: str, after: int = 0, retries: int = 30) -> Iterator[dict[str, Any]]:
        """The task's events as Server-Sent Events, reconnecting (with Last-Event-ID) until the task has ended.
        Keep-alives (and any event without data) are skipped; data that is not an event is a ClientError."""
        last, failures = after, 0
        while True:
            try:
                for event in self._stream(task_id, last):
                    last, failures = event["seq"], 0
                    yield event
                # The server ends the stream after a task's final event — or when it restarts: ask which.
                if self._has_ended(task_id):
                    return
                trouble = f"the event stream from {self.server} keeps ending early"
            except (httpx.TransportError, _Unavailable) as exc:
                trouble = f"lost the event stream from {self.server}: {exc}"
            failures += 1
            if failures > retries:
                raise ClientError(trouble, exit_code=3)
            time.sleep(min(0.5 * failures, 5))

    def _stream(self, task_id: str, last: int) -> Iterator[dict[str, Any]]:
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(last)}
        with connect_sse(self._http, "GET", f"/v1/tasks/{task_id}/events", headers=headers,
                         timeout=httpx.Timeout(30, read=None)) as source:  # fmt: skip
            response = source.response
            if response.status_code >= 400:
                response.read()
                if response.status_code in (502, 503, 504):
                    raise _Unavailable(_error_message(response))
                code = 3 if response.status_code in (401, 403) or response.status_code >= 500 else 2
                raise ClientError(_error_message(response), exit_code=code, status=response.status_code)
            kind = response.headers.get("content-type", "").partition(";")[0].strip()
            if kind != "text/event-stream":
                start = next(response.iter_bytes(), b"").decode(errors="replace")  # the body may never end
                raise self._unexpected(response, f"{kind or 'no content type'}, not an event stream: {_snippet(start)}")
            for sse in source.iter_sse():
                # sse-starlette's keep-alive is a comment line; the empty line after it comes through as an event
                # with no data (carrying the last id), and so do comments and named events without data.
                if not sse.data.strip():
                    continue
                yield self._event(response, sse.data)

    def _event(self, response: httpx.Response, data: str) -> dict[str, Any]:
        try:
            event = json.loads(data)
        except ValueError:
            raise self._unexpected(response, f"an event whose data is not JSON: {_snippet(data)}") from None
        problem = _mismatch(event, EVENT)
        if problem:
            raise self._unexpected(response, f"an event with {problem}")
        return event  # type: ignore[no-any-return]

    def _has_ended(self, task_id: str) -> bool:
        try:
            return self.get_task(task_id)["state"] in FINAL_STATES
        except UnexpectedAnswer:
            raise
        except ClientError as exc:
            if exc.exit_code != 3:
                raise
            return False  # the server is restarting: keep trying

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self.post(f"/v1/tasks/{task_id}/cancel")

    def send_message(self, task_id: str, text: str, *, mode: str) -> dict[str, Any]:
        """A message to a task not yet ended (steer or queue); the answer is the message, pending."""
        response = self.request("POST", f"/v1/tasks/{task_id}/messages", json={"mode": mode, "text": text})
        return self._json(response, MESSAGE)


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        message = f"{error['message']} ({error['code']}, HTTP {response.status_code})"
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {response.status_code}: {response.text[:200]}"
    return " ".join(message.split())  # one line, whatever the body held
