"""The queries about environments: who sees which, creating and changing one, its sealed secrets, and the one
that applies to a repository."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from overnight.environments import best_match
from store.models import Environment, EnvironmentSecret, User, utcnow


def may_manage(environment: Environment, user: User) -> bool:
    """Admins manage every environment; a user those an admin named its owner."""
    return user.is_admin or user.name in (environment.owners or [])


def list_environments(session: Session, *, user: User, pattern: str | None = None) -> list[Environment]:
    """The environments ``user`` manages (every one for an admin), by pattern; only ``pattern``'s when given."""
    query = select(Environment).options(selectinload(Environment.secrets)).order_by(Environment.pattern)
    if pattern is not None:
        query = query.where(Environment.pattern == pattern)
    return [env for env in session.scalars(query).all() if may_manage(env, user)]


def get_environment(session: Session, environment_id: int, *, user: User | None = None) -> Environment | None:
    """The environment with this id, if it exists and ``user`` (when given) manages it."""
    environment = session.get(Environment, environment_id, options=[selectinload(Environment.secrets)])
    if environment is None or (user is not None and not may_manage(environment, user)):
        return None
    return environment


def environment_by_pattern(session: Session, pattern: str) -> Environment | None:
    return session.scalar(
        select(Environment).options(selectinload(Environment.secrets)).where(Environment.pattern == pattern)
    )


def create_environment(session: Session, pattern: str) -> Environment:
    """A new environment with every default (the caller sets what was asked and commits)."""
    environment = Environment(pattern=pattern, variables={}, setup_network={}, agent_network={}, owners=[])
    session.add(environment)
    session.flush()
    return environment


def update_environment(environment: Environment, changes: dict[str, Any]) -> None:
    """Set the given fields (``variables`` is merged: a None value removes that variable)."""
    for field, value in changes.items():
        if field == "variables":
            merged = dict(environment.variables or {})
            for name, item in value.items():
                if item is None:
                    merged.pop(name, None)
                else:
                    merged[name] = item
            environment.variables = merged
        else:
            setattr(environment, field, value)
    environment.updated_at = utcnow()


def set_secret(
    session: Session, environment: Environment, name: str, ciphertext: str
) -> tuple[EnvironmentSecret, bool]:
    """Store ``name``'s sealed value under a new version; True when the secret is new."""
    row = next((secret for secret in environment.secrets if secret.name == name), None)
    created = row is None
    if row is None:
        row = EnvironmentSecret(environment_id=environment.id, name=name, ciphertext=ciphertext, version="")
        environment.secrets.append(row)
    row.ciphertext, row.version, row.updated_at = ciphertext, secrets.token_hex(16), utcnow()
    environment.updated_at = utcnow()
    session.flush()
    return row, created


def remove_secret(session: Session, environment: Environment, name: str) -> bool:
    """Remove ``name``; False when the environment has no such secret."""
    row = next((secret for secret in environment.secrets if secret.name == name), None)
    if row is None:
        return False
    environment.secrets.remove(row)
    environment.updated_at = utcnow()
    session.flush()
    return True


def matching_environment(session: Session, repo: str) -> Environment | None:
    """The environment a task on ``repo`` gets (``overnight.environments.best_match``), secrets loaded."""
    rows = session.scalars(select(Environment).options(selectinload(Environment.secrets))).all()
    return best_match(repo, rows)


def every_secret(session: Session) -> Sequence[tuple[EnvironmentSecret, str]]:
    """Every stored secret with its environment's pattern (for rotating the key), locked until the commit."""
    query = (
        select(EnvironmentSecret, Environment.pattern)
        .join(Environment, Environment.id == EnvironmentSecret.environment_id)
        .order_by(EnvironmentSecret.environment_id, EnvironmentSecret.name)
        .with_for_update()
    )
    return [(secret, pattern) for secret, pattern in session.execute(query).all()]
