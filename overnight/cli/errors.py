"""The CLI's one error (kept apart from the HTTP client so that `--help` needs no network libraries)."""

from __future__ import annotations


class ClientError(Exception):
    """A request failed; ``exit_code`` is what the CLI exits with: 3 server unreachable or auth failure,
    2 a request the server refused (no such task, not in that state, invalid input)."""

    def __init__(self, message: str, *, exit_code: int = 1, status: int | None = None) -> None:
        super().__init__(message)
        self.exit_code, self.status = exit_code, status
