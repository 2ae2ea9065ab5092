"""The one exception of the GitHub package."""

from __future__ import annotations

import httpx


class GitHubError(RuntimeError):
    """A GitHub call failed; ``status`` is the HTTP status (0: before any request), the message is readable."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @classmethod
    def from_response(cls, response: httpx.Response, what: str) -> GitHubError:
        try:
            body = response.json()
        except ValueError:
            body = {}
        message = str(body.get("message") or response.reason_phrase or "error") if isinstance(body, dict) else ""
        details = [
            str(error.get("message") or error.get("code"))
            for error in (body.get("errors") or [] if isinstance(body, dict) else [])
            if isinstance(error, dict)
        ]
        if details:
            message += ": " + "; ".join(details)
        return cls(response.status_code, f"{what}: GitHub answered {response.status_code} {message}")
