"""Server-side token commands (``overnight token create|list|revoke``): they open the database directly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from overnight.settings import Settings

Say = Callable[[str], None]


def _sessions(settings: Settings) -> sessionmaker[Session]:
    from store.engine import make_engine, make_sessionmaker, migrate

    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    return make_sessionmaker(engine)


def _moment(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


def expiry(settings: Settings, expires_in_days: float | None) -> datetime | None:
    """When a new token expires: ``expires_in_days`` if given, else OVERNIGHT_TOKEN_TTL_DAYS; 0 means never."""
    from store.models import utcnow

    days = settings.api.token_ttl_days if expires_in_days is None else expires_in_days
    return utcnow() + timedelta(days=days) if days > 0 else None


def create_token(*, user: str, admin: bool, expires_in_days: float | None, say: Say) -> tuple[str, datetime | None]:
    """A new token for ``user``: the token (shown once) and when it expires (None: never)."""
    import store.users

    settings = Settings()
    expires_at = expiry(settings, expires_in_days)
    with _sessions(settings).begin() as session:
        token = store.users.create_token(
            session, user, admin=admin, label="overnight token create", expires_at=expires_at
        )
    until = f"valid until {expires_at:%Y-%m-%d %H:%M} UTC" if expires_at else "never expires"
    say(f"token for {user}{' (admin)' if admin else ''}, {until}; it is shown once:")
    return token, expires_at


def list_tokens(*, user: str | None) -> list[dict[str, Any]]:
    """Every token (or ``user``'s), oldest first, with its state and when it was last used (to the minute)."""
    import store.users
    from store.models import utcnow

    now = utcnow()
    with _sessions(Settings())() as session:
        return [
            {
                "id": token.id,
                "user": token.user.name,
                "admin": token.user.is_admin,
                "label": token.label,
                "state": store.users.token_state(token, now),
                "created_at": _moment(token.created_at),
                "expires_at": _moment(token.expires_at),
                "last_used_at": _moment(token.last_used_at),
                "revoked_at": _moment(token.revoked_at),
            }
            for token in store.users.list_tokens(session, user_name=user)
        ]


def revoke_tokens(*, ids: Sequence[int], user: str | None) -> tuple[list[int], list[int]]:
    """Revoke tokens by id and/or all of ``user``'s: (ids newly revoked, ids given that name no token)."""
    from sqlalchemy import select

    import store.users
    from store.models import Token

    with _sessions(Settings()).begin() as session:
        known = set(session.scalars(select(Token.id).where(Token.id.in_(ids))).all()) if ids else set()
        revoked = store.users.revoke_tokens(session, token_ids=ids, user_name=user)
    return sorted(revoked), sorted(set(ids) - known)
