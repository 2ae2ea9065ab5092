"""Dependencies of the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.auth import USER_SCOPE_KEY
from api.errors import APIError
from overnight.queue import TaskQueue
from overnight.settings import Settings
from store.models import User

bearer = HTTPBearer(auto_error=False, description="A token from `overnight token create --user NAME`.")


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_queue(request: Request) -> TaskQueue:
    return request.app.state.queue  # type: ignore[no-any-return]


def get_user(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> User:
    """The user ``api.auth.BearerAuthMiddleware`` authenticated before the body was read (``credentials``
    puts the bearer scheme in the OpenAPI schema)."""
    user = request.scope.get(USER_SCOPE_KEY)
    if not isinstance(user, User):  # a route outside /v1/ asking for a user: a mistake of ours, not the client's
        raise APIError(401, "unauthorized", "a bearer token is required (Authorization: Bearer TOKEN)")
    return user


def reject_unknown_query(request: Request) -> None:
    """A query parameter the operation does not take is an error, not silently ignored (``?stat=failed``)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known: set[str] = set()
    pending = [dependant]
    while pending:
        current = pending.pop()
        known |= {param.alias for param in current.query_params}
        pending.extend(current.dependencies)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        details = [{"field": f"query.{name}", "message": "unknown query parameter"} for name in unknown]
        raise APIError(422, "validation_error", f"unknown query parameter(s): {', '.join(unknown)}", details)


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
QueueDep = Annotated[TaskQueue, Depends(get_queue)]
CurrentUser = Annotated[User, Depends(get_user)]
