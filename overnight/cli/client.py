"""The HTTP client the CLI uses; it speaks to the API only."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

from overnight.cli.errors import ClientError
from overnight.client_settings import ClientSettings


def _tls_for(server: str) -> ssl.SSLContext | bool:
    """httpx's default (certifi's bundle, or SSL_CERT_FILE/SSL_CERT_DIR) for an https:// server; for plain
    http://, a strict context with no CA at all: loading a bundle there costs a tenth of a second of start-up
    for nothing, and a redirect to https then fails verification instead of going unverified."""
    if server.lower().startswith("https://"):
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default


FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


class APIClient:
    def __init__(self, settings: ClientSettings, *, timeout: float = 30.0) -> None:
        headers = {"user-agent": "overnight-cli"}
        if settings.token is not None:
            headers["authorization"] = f"Bearer {settings.token.get_secret_value()}"
        self.server = settings.server
        self._http = httpx.Client(base_url=settings.server, headers=headers, timeout=timeout,
                                  verify=_tls_for(settings.server))  # fmt: skip

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach the Overnight server at {self.server}: {exc}", exit_code=3) from exc
        if response.status_code >= 400:
            # 3: the server is down or refuses the token; 2: it refused the request (no such task, bad input).
            code = 3 if response.status_code in (401, 403) or response.status_code >= 500 else 2
            raise ClientError(_error_message(response), exit_code=code, status=response.status_code)
        return response

    def create_task(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/v1/tasks", json=body).json()  # type: ignore[no-any-return]

    def get_task(self, task_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/tasks/{task_id}").json()  # type: ignore[no-any-return]

    def list_tasks(self, **params: Any) -> list[dict[str, Any]]:
        params = {key: value for key, value in params.items() if value is not None}
        return self.request("GET", "/v1/tasks", params=params).json()["tasks"]  # type: ignore[no-any-return]

    def whoami(self) -> None:
        """Raises ClientError (exit 3) when the server is down or the token is refused."""
        self.request("GET", "/v1/tasks", params={"limit": 1})

    def events(self, task_id: str, after: int = 0) -> list[dict[str, Any]]:
        response = self.request("GET", f"/v1/tasks/{task_id}/events", params={"after": after})
        return response.json()["events"]  # type: ignore[no-any-return]

    def patch(self, task_id: str, fmt: str = "diff") -> str:
        return self.request("GET", f"/v1/tasks/{task_id}/patch", params={"format": fmt}).text

    def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.request("POST", path, json=body).json()  # type: ignore[no-any-return]

    def follow_events(self, task_id: str, after: int = 0, retries: int = 30) -> Iterator[dict[str, Any]]:
        """The task's events as Server-Sent Events, reconnecting (with Last-Event-ID) until the stream ends."""
        last, failures = after, 0
        while True:
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(last)}
            try:
                with connect_sse(self._http, "GET", f"/v1/tasks/{task_id}/events", headers=headers,
                                 timeout=httpx.Timeout(30, read=None)) as source:  # fmt: skip
                    if source.response.status_code >= 400:
                        source.response.read()
                        code = 3 if source.response.status_code in (401, 403) else 2
                        raise ClientError(_error_message(source.response), exit_code=code)
                    for sse in source.iter_sse():
                        event = json.loads(sse.data)
                        last, failures = event["seq"], 0
                        yield event
                # The server ends the stream after a task's final event — or when it restarts: ask which.
                try:
                    ended = self.get_task(task_id)["state"] in FINAL_STATES
                except ClientError as exc:
                    if exc.exit_code != 3:
                        raise
                    ended = False  # the server is restarting: keep trying
                if ended:
                    return
                failures += 1
                if failures > retries:
                    raise ClientError(f"the event stream from {self.server} keeps ending early", exit_code=3)
                time.sleep(min(0.5 * failures, 5))
            except (httpx.TransportError, SSEError) as exc:
                failures += 1
                if failures > retries:
                    raise ClientError(f"lost the event stream from {self.server}: {exc}", exit_code=3) from exc
                time.sleep(min(0.5 * failures, 5))

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/tasks/{task_id}/cancel").json()  # type: ignore[no-any-return]


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['message']} ({error['code']}, HTTP {response.status_code})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"
