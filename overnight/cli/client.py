"""The HTTP client the CLI uses; it speaks to the API only."""

from __future__ import annotations

from typing import Any

import httpx

from overnight.settings import ClientSettings


class ClientError(Exception):
    """A request failed; ``exit_code`` is what the CLI exits with (3: server unreachable or auth)."""

    def __init__(self, message: str, *, exit_code: int = 1, status: int | None = None) -> None:
        super().__init__(message)
        self.exit_code, self.status = exit_code, status


class APIClient:
    def __init__(self, settings: ClientSettings, *, timeout: float = 30.0) -> None:
        headers = {"user-agent": "overnight-cli"}
        if settings.token is not None:
            headers["authorization"] = f"Bearer {settings.token.get_secret_value()}"
        self.server = settings.server
        self._http = httpx.Client(base_url=settings.server, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach the Overnight server at {self.server}: {exc}", exit_code=3) from exc
        if response.status_code >= 400:
            raise ClientError(
                _error_message(response),
                exit_code=3 if response.status_code in (401, 403) else 1,
                status=response.status_code,
            )
        return response

    def create_task(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/v1/tasks", json=body).json()  # type: ignore[no-any-return]

    def get_task(self, task_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/tasks/{task_id}").json()  # type: ignore[no-any-return]

    def list_tasks(self, **params: Any) -> list[dict[str, Any]]:
        params = {key: value for key, value in params.items() if value is not None}
        return self.request("GET", "/v1/tasks", params=params).json()["tasks"]  # type: ignore[no-any-return]

    def events(self, task_id: str, after: int = 0) -> list[dict[str, Any]]:
        response = self.request("GET", f"/v1/tasks/{task_id}/events", params={"after": after})
        return response.json()["events"]  # type: ignore[no-any-return]

    def patch(self, task_id: str) -> str:
        return self.request("GET", f"/v1/tasks/{task_id}/patch").text

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self.request("POST", f"/v1/tasks/{task_id}/cancel").json()  # type: ignore[no-any-return]


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['message']} ({error['code']}, HTTP {response.status_code})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"
