"""Token checks, revocation and the per-user count of unfinished tasks, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from migrations import store, user_store
from migrations.models import TaskState, Token, User, utcnow


def _token_row(session: Session, token: str) -> Token:
    row = session.scalar(select(Token).where(Token.token_hash == user_store.hash_token(token)))
    assert row is not None
    return row


def test_valid_expired_revoked_and_unknown_tokens(session: Session) -> None:
    valid = user_store.create_token(session, "ada", expires_at=utcnow() + timedelta(days=1))
    expired = user_store.create_token(session, "ada", expires_at=utcnow() - timedelta(seconds=1))
    revoked = user_store.create_token(session, "ada")
    assert user_store.revoke_tokens(session, token_ids=[_token_row(session, revoked).id]) == [
        _token_row(session, revoked).id
    ]
    assert user_store.authenticate(session, valid).name == "ada"
    with pytest.raises(user_store.TokenRefused, match="expired on"):
        user_store.authenticate(session, expired)
    with pytest.raises(user_store.TokenRefused, match="was revoked on"):
        user_store.authenticate(session, revoked)
    with pytest.raises(user_store.TokenRefused, match="not valid"):
        user_store.authenticate(session, "ovn_unknown")
    assert user_store.user_for_token(session, expired) is None
    states = {row.id: user_store.token_state(row) for row in user_store.list_tokens(session, user_name="ada")}
    assert sorted(states.values()) == ["active", "expired", "revoked"]


def test_last_use_is_written_at_most_once_a_minute(session: Session) -> None:
    token = user_store.create_token(session, "bo")
    user_store.authenticate(session, token)
    first = _token_row(session, token).last_used_at
    assert first is not None
    user_store.authenticate(session, token)
    assert _token_row(session, token).last_used_at == first
    _token_row(session, token).last_used_at = first - timedelta(minutes=2)
    user_store.authenticate(session, token)
    moved = _token_row(session, token).last_used_at
    assert moved is not None and moved >= first


def test_revoking_a_user_s_tokens_keeps_the_first_revocation(session: Session) -> None:
    tokens = [user_store.create_token(session, "cy") for _ in range(2)]
    other = user_store.create_token(session, "di")
    first_id = _token_row(session, tokens[0]).id
    assert user_store.revoke_tokens(session, token_ids=[first_id]) == [first_id]
    assert user_store.revoke_tokens(session, user_name="cy") == [_token_row(session, tokens[1]).id]
    assert user_store.revoke_tokens(session, user_name="cy") == []
    assert user_store.user_for_token(session, other) is not None


def test_unfinished_tasks_are_queued_preparing_and_running_ones(session: Session) -> None:
    user_store.create_token(session, "ed")
    user = session.scalar(select(User).where(User.name == "ed"))
    assert user is not None
    ids = [store.create_task(session, repo="https://e.com/a.git", ref=None, instruction="x", user_id=user.id).id
           for _ in range(4)]  # fmt: skip
    store.transition(session, ids[1], from_states=[TaskState.queued], to_state=TaskState.preparing)
    store.transition(session, ids[2], from_states=[TaskState.queued], to_state=TaskState.cancelled, reason="x")
    store.transition(session, ids[3], from_states=[TaskState.queued], to_state=TaskState.failed, reason="x")
    assert user_store.unfinished_tasks_locked(session, user.id) == 2
