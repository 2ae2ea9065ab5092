"""Request bodies are counted while they stream, chunked ones included: past its route's limit a request gets
413 at once, and the rest of its body is never read."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LIMIT_SCOPE_KEY = "overnight.max_body_bytes"


class BodyTooLargeError(HTTPException):
    """Raised from ``receive`` once a body passes its limit; the error handlers answer it with the one shape."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=too_large_message(limit))


def too_large_message(limit: int) -> str:
    return f"the request body is larger than this endpoint's limit of {limit} bytes"


def too_large_response(limit: int) -> JSONResponse:
    error = {"code": "payload_too_large", "message": too_large_message(limit)}
    return JSONResponse({"error": error}, status_code=413, headers={"Connection": "close"})


class BodyLimitMiddleware:
    """A byte budget per request: ``limits[(METHOD, path)]``, else ``default``.

    A declared Content-Length over the budget is refused before anything is read; a chunked body is cut at the
    first message that passes it. Either way the connection is closed (the client may still be sending)."""

    def __init__(self, app: ASGIApp, *, default: int, limits: dict[tuple[str, str], int]) -> None:
        self.app, self.default, self.limits = app, default, limits

    def limit_for(self, scope: Scope) -> int:
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        return self.limits.get((scope["method"], path), self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        scope[LIMIT_SCOPE_KEY] = limit
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await too_large_response(limit)(scope, receive, send)
            return
        received = 0
        started = False
        unread = declared not in (None, "0") or "transfer-encoding" in Headers(scope=scope)

        async def counted_receive() -> Message:
            nonlocal received, unread
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(limit)
                unread = unread and message.get("more_body", False)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                if unread and all(name.lower() != b"connection" for name, _ in headers):
                    # answered before the body ended (a 413, a 401): the rest is never read, so hang up
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLargeError:
            if started:
                raise
            await too_large_response(limit)(scope, receive, send)
