"""The queries about users: their tokens (create, check, list, revoke) and their quota of unfinished tasks."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from store.models import ACTIVE_STATES, FINAL_STATES, Task, Token, User, utcnow

LAST_USED_PRECISION = timedelta(minutes=1)
"""last_used_at is written at most this often per token, so that reading the API is not a write per request."""


class TokenRefused(Exception):
    """A bearer token that does not let anyone in; the message says why, for the 401."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session,
    user_name: str,
    *,
    admin: bool = False,
    label: str | None = None,
    expires_at: datetime | None = None,
) -> str:
    """A new token for ``user_name`` (created if new); returns the token itself, which is stored hashed.
    ``expires_at`` None: it does not expire."""
    user = session.scalar(select(User).where(User.name == user_name))
    if user is None:
        user = User(name=user_name, is_admin=admin)
        session.add(user)
        session.flush()
    elif admin and not user.is_admin:
        user.is_admin = True
    token = "ovn_" + secrets.token_urlsafe(32)
    session.add(Token(user_id=user.id, token_hash=hash_token(token), label=label, expires_at=expires_at))
    session.flush()
    return token


def authenticate(session: Session, token: str) -> User:
    """The user of a valid token; raises TokenRefused (unknown, revoked or expired). Records the use at most
    once a minute (the caller commits)."""
    row = session.scalar(select(Token).where(Token.token_hash == hash_token(token)))
    if row is None:
        raise TokenRefused("the bearer token is not valid")
    now = utcnow()
    if row.revoked_at is not None:
        raise TokenRefused(f"the bearer token was revoked on {row.revoked_at:%Y-%m-%d %H:%M} UTC")
    if row.expires_at is not None and row.expires_at <= now:
        raise TokenRefused(
            f"the bearer token expired on {row.expires_at:%Y-%m-%d %H:%M} UTC; ask for a new one "
            "(`overnight token create` on the server)"
        )
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_PRECISION:
        row.last_used_at = now
    return row.user


def user_for_token(session: Session, token: str) -> User | None:
    """The user of a valid token, or None."""
    try:
        return authenticate(session, token)
    except TokenRefused:
        return None


def list_tokens(session: Session, *, user_name: str | None = None) -> Sequence[Token]:
    """Every token (with its user loaded), oldest first; only ``user_name``'s when given."""
    query = select(Token).join(Token.user).order_by(Token.id)
    if user_name is not None:
        query = query.where(User.name == user_name)
    tokens = session.scalars(query).all()
    for token in tokens:
        _ = token.user.name  # loaded while the session is open
    return tokens


def revoke_tokens(session: Session, *, token_ids: Sequence[int] = (), user_name: str | None = None) -> list[int]:
    """Revoke the tokens with these ids, and every token of ``user_name``; returns the ids newly revoked
    (a token revoked before keeps its first revocation time)."""
    if not token_ids and user_name is None:
        return []
    query = select(Token.id).join(Token.user).where(Token.revoked_at.is_(None))
    if token_ids and user_name is not None:
        query = query.where(Token.id.in_(token_ids) | (User.name == user_name))
    elif token_ids:
        query = query.where(Token.id.in_(token_ids))
    else:
        query = query.where(User.name == user_name)
    ids = list(session.scalars(query).all())
    if ids:
        session.execute(update(Token).where(Token.id.in_(ids)).values(revoked_at=utcnow()))
    return ids


def token_state(token: Token, now: datetime | None = None) -> str:
    """active, expired or revoked."""
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= (now or utcnow()):
        return "expired"
    return "active"


def unfinished_tasks_locked(session: Session, user_id: int) -> int:
    """The user's tasks not yet ended (queued, preparing, running), counted under a lock on the user's row so
    that two concurrent creates cannot both pass a quota check (PostgreSQL: the row lock until the commit;
    SQLite: the database's write lock)."""
    session.execute(update(User).where(User.id == user_id).values(updated_at=utcnow()))
    count = session.scalar(
        select(func.count())
        .select_from(Task)
        .where(
            Task.user_id == user_id,
            Task.state.not_in([state.value for state in FINAL_STATES]),
            Task.attempts <= 1,  # a task with attempts: its attempt tasks count
        )
    )
    return count or 0


def active_tasks_locked(session: Session, user_id: int) -> int:
    """The user's tasks holding a worker now (preparing or running), under a lock on the user's row that serialises
    concurrent claims of one user (PostgreSQL: a row lock; SQLite: the write lock). A task with attempts runs no
    agent of its own (its attempt tasks count) and holds a worker only while it ranks them (its heartbeat is set)."""
    session.execute(update(User).where(User.id == user_id).values(updated_at=utcnow()))
    active = session.scalar(
        select(func.count())
        .select_from(Task)
        .where(
            Task.user_id == user_id,
            Task.state.in_([s.value for s in ACTIVE_STATES]),
            (Task.attempts <= 1) | Task.heartbeat_at.is_not(None),
        )
    )
    return active or 0
