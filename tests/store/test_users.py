"""Token checks, revocation and the per-user count of unfinished tasks, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

import store.tasks
import store.users
from store.models import TaskState, Token, User, utcnow


def _token_row(session: Session, token: str) -> Token:
    row = session.scalar(select(Token).where(Token.token_hash == store.users.hash_token(token)))
    assert row is not None
    return row


def test_valid_expired_revoked_and_unknown_tokens(session: Session) -> None:
    valid = store.users.create_token(session, "ada", expires_at=utcnow() + timedelta(days=1))
    expired = store.users.create_token(session, "ada", expires_at=utcnow() - timedelta(seconds=1))
    revoked = store.users.create_token(session, "ada")
    assert store.users.revoke_tokens(session, token_ids=[_token_row(session, revoked).id]) == [
        _token_row(session, revoked).id
    ]
    assert store.users.authenticate(session, valid).name == "ada"
    with pytest.raises(store.users.TokenRefused, match="expired on"):
        store.users.authenticate(session, expired)
    with pytest.raises(store.users.TokenRefused, match="was revoked on"):
        store.users.authenticate(session, revoked)
    with pytest.raises(store.users.TokenRefused, match="not valid"):
        store.users.authenticate(session, "ovn_unknown")
    assert store.users.user_for_token(session, expired) is None
    states = {row.id: store.users.token_state(row) for row in store.users.list_tokens(session, user_name="ada")}
    assert sorted(states.values()) == ["active", "expired", "revoked"]


def test_last_use_is_written_at_most_once_a_minute(session: Session) -> None:
    token = store.users.create_token(session, "bo")
    store.users.authenticate(session, token)
    first = _token_row(session, token).last_used_at
    assert first is not None
    store.users.authenticate(session, token)
    assert _token_row(session, token).last_used_at == first
    _token_row(session, token).last_used_at = first - timedelta(minutes=2)
    store.users.authenticate(session, token)
    moved = _token_row(session, token).last_used_at
    assert moved is not None and moved >= first


def test_revoking_a_user_s_tokens_keeps_the_first_revocation(session: Session) -> None:
    tokens = [store.users.create_token(session, "cy") for _ in range(2)]
    other = store.users.create_token(session, "di")
    first_id = _token_row(session, tokens[0]).id
    assert store.users.revoke_tokens(session, token_ids=[first_id]) == [first_id]
    assert store.users.revoke_tokens(session, user_name="cy") == [_token_row(session, tokens[1]).id]
    assert store.users.revoke_tokens(session, user_name="cy") == []
    assert store.users.user_for_token(session, other) is not None


def test_unfinished_tasks_are_queued_preparing_and_running_ones(session: Session) -> None:
    store.users.create_token(session, "ed")
    user = session.scalar(select(User).where(User.name == "ed"))
    assert user is not None
    ids = [store.tasks.create_task(session, repo="https://e.com/a.git", ref=None, instruction="x", user_id=user.id).id
           for _ in range(4)]  # fmt: skip
    store.tasks.transition(session, ids[1], from_states=[TaskState.queued], to_state=TaskState.preparing)
    store.tasks.transition(session, ids[2], from_states=[TaskState.queued], to_state=TaskState.cancelled, reason="x")
    store.tasks.transition(session, ids[3], from_states=[TaskState.queued], to_state=TaskState.failed, reason="x")
    assert store.users.unfinished_tasks_locked(session, user.id) == 2
