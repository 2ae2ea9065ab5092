"""Typed SQLAlchemy 2 models: tasks, their ordered events, and the patches they produce."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime stored; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class TaskState(enum.StrEnum):
    queued = "queued"
    preparing = "preparing"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({TaskState.succeeded, TaskState.failed, TaskState.cancelled})
ACTIVE_STATES = frozenset({TaskState.preparing, TaskState.running})


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    """Touched when a task of the user is claimed: the row lock that serialises concurrency checks."""


class Token(Base):
    """An API bearer token; only its SHA-256 is stored."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    """Written at most once a minute per token (not on every request)."""
    expires_at: Mapped[datetime | None]
    """Past this the token is refused; None: it does not expire."""
    revoked_at: Mapped[datetime | None]
    """Set by `overnight token revoke`; a revoked token is refused from then on."""

    user: Mapped[User] = relationship()


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("user_id", "idempotency_key", name="uq_tasks_user_idempotency_key"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL", name="fk_tasks_user_id_users"), index=True
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    parent_id: Mapped[str | None] = mapped_column(String(32))
    """The task this one follows up (its patch is the starting point) or retries."""
    kind: Mapped[str] = mapped_column(String(16), default="task")
    """task, retry or follow-up."""
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    """Executions started; a redelivery after a worker crash starts the next one."""
    attempts: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    """Best-of-N: how many attempts run this task (1: the task runs itself; more: attempt tasks run it)."""
    attempt_of: Mapped[str | None] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE", name="fk_tasks_attempt_of_tasks"), index=True
    )
    """On an attempt task: the task it is one attempt of."""
    attempt_index: Mapped[int | None] = mapped_column(Integer)
    """On an attempt task: K, from 1 to the task's ``attempts``."""
    ranking: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """On a task with attempts, once they ended: the ranking and why (store.bestof)."""
    worker: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]
    sandbox_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    """Seconds spent running commands in sandboxes (set-up and tools)."""
    repo: Mapped[str] = mapped_column(String(2048))
    ref: Mapped[str | None] = mapped_column(String(255))
    instruction: Mapped[str] = mapped_column(Text)
    max_steps: Mapped[int | None] = mapped_column(Integer)
    start_diff: Mapped[str | None] = mapped_column(Text)
    """Changes uploaded with the task (a user's unpushed commits and dirty files), applied before the agent."""
    setup: Mapped[str | None] = mapped_column(String(255))
    """A set-up script of the repository to run instead of .overnight/setup.sh."""
    state: Mapped[str] = mapped_column(String(16), index=True, default=TaskState.queued.value)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    base_sha: Mapped[str | None] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    steps: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    events: Mapped[list[TaskEvent]] = relationship(
        back_populates="task", order_by="TaskEvent.seq", cascade="all, delete-orphan"
    )
    patch: Mapped[Patch | None] = relationship(back_populates="task", cascade="all, delete-orphan")
    trajectory: Mapped[Trajectory | None] = relationship(cascade="all, delete-orphan")
    github: Mapped[GitHubLink | None] = relationship(cascade="all, delete-orphan")


class TaskEvent(Base):
    __tablename__ = "task_events"
    __table_args__ = (UniqueConstraint("task_id", "seq", name="uq_task_events_task_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    task: Mapped[Task] = relationship(back_populates="events")


class Patch(Base):
    __tablename__ = "patches"

    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    base_sha: Mapped[str] = mapped_column(String(64))
    diff: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(String(512))
    body: Mapped[str] = mapped_column(Text)
    files_changed: Mapped[int] = mapped_column(Integer, default=0)
    excluded: Mapped[list[str]] = mapped_column(JSON, default=list)
    """Paths the built-in exclude list kept out of the diff (caches, dependencies, build output)."""
    complete: Mapped[bool] = mapped_column(default=True)
    """False when the run ended early (budget, cancel): the diff is what the agent had done so far."""
    diffstat: Mapped[str] = mapped_column(Text, default="")
    commit_message: Mapped[str] = mapped_column(Text, default="")
    mbox: Mapped[str] = mapped_column(Text, default="")
    """``git format-patch`` output that ``git am`` applies (empty when the diff is)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    task: Mapped[Task] = relationship(back_populates="patch")


class Trajectory(Base):
    """The full transcript of a task's agent run: tools, messages (compaction marked) and per-step usage."""

    __tablename__ = "trajectories"

    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class TaskMessage(Base):
    """A message a user sent to a task while it ran: a steer (given to the model at its next tool boundary) or
    a queued one (given when the model would finish; the run goes on). Each is delivered at a step, or dropped
    with the reason when its task ended first — never left pending."""

    __tablename__ = "task_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    author: Mapped[str] = mapped_column(String(100))
    """The sender's user name as it was then (github:LOGIN for a comment on GitHub)."""
    mode: Mapped[str] = mapped_column(String(8))
    """steer or queue."""
    text: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    """pending, delivered or dropped."""
    step: Mapped[int | None] = mapped_column(Integer)
    """The step after whose tool results it was given to the model (delivered only)."""
    reason: Mapped[str | None] = mapped_column(Text)
    """Why it was dropped."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    settled_at: Mapped[datetime | None]
    """When it was delivered or dropped."""


class GitHubDelivery(Base):
    """A webhook delivery seen (its GUID is the key: a redelivery finds it and starts nothing)."""

    __tablename__ = "github_deliveries"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event: Mapped[str] = mapped_column(String(64))
    action: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(255))
    task_id: Mapped[str | None] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    request_key: Mapped[str | None] = mapped_column(String(64), unique=True, index=True)
    """What the delivery asked for (a hash of the comment, or of the label event), for a delivery that asked:
    the same request replayed under a new delivery id finds it and starts nothing."""


class GitHubInstallation(Base):
    """An installation of the GitHub App: only its repositories may start tasks."""

    __tablename__ = "github_installations"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    account: Mapped[str] = mapped_column(String(255), default="")
    suspended: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class GitHubLink(Base):
    """Where a task came from on GitHub and where its result went."""

    __tablename__ = "github_links"

    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    repo: Mapped[str] = mapped_column(String(255), index=True)
    """OWNER/NAME."""
    installation_id: Mapped[int | None] = mapped_column(BigInteger)
    number: Mapped[int] = mapped_column(Integer)
    """The issue, or the pull request commented on."""
    source: Mapped[str] = mapped_column(String(32))
    """label, issue-comment, pr-comment or review-comment."""
    sender: Mapped[str] = mapped_column(String(100))
    trigger_comment_id: Mapped[int | None] = mapped_column(BigInteger)
    progress_comment_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    branch: Mapped[str] = mapped_column(String(255), index=True)
    base_branch: Mapped[str] = mapped_column(String(255))
    pr_number: Mapped[int | None] = mapped_column(Integer)
    pr_url: Mapped[str | None] = mapped_column(String(512))
    publish_state: Mapped[str] = mapped_column(String(16), default="pending")
    """pending, published, failed or skipped."""
    publish_error: Mapped[str | None] = mapped_column(Text)


class Environment(Base):
    """Per repository pattern: the set-up script override, variables, secrets and the phases' network
    policies a task on a matching repository gets (docs/environments.md)."""

    __tablename__ = "environments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pattern: Mapped[str] = mapped_column(String(2048), unique=True)
    """``overnight.environments.pattern_key``'s spelling: *, an absolute path, or a normalised address."""
    setup_script: Mapped[str | None] = mapped_column(Text)
    """Run instead of the repository's set-up (None: the repository's, or the automatic one)."""
    variables: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Name → value, given to the set-up and the agent's commands."""
    setup_network: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """A NetworkPolicy's JSON; empty: the default."""
    agent_network: Mapped[dict[str, Any]] = mapped_column(default=dict)
    owners: Mapped[list[str]] = mapped_column(JSON, default=list)
    """User names who may change it besides admins (set by admins)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    secrets: Mapped[list[EnvironmentSecret]] = relationship(
        order_by="EnvironmentSecret.name", cascade="all, delete-orphan"
    )


class EnvironmentSecret(Base):
    """One secret of an environment, sealed with the server key (``overnight.secrets``); never sent back."""

    __tablename__ = "environment_secrets"

    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    ciphertext: Mapped[str] = mapped_column(Text)
    version: Mapped[str] = mapped_column(String(32))
    """Random, new each time the value is set: the set-up cache key holds it, never the value or its hash."""
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TaskImage(Base):
    """An image given with a task (an upload, a URL the API fetched, or one in a GitHub issue the worker fetches):
    its bytes once they are here, or why they could not be had. The model is sent it in the task's first message;
    events and trajectories name it by its SHA-256 only."""

    __tablename__ = "task_images"
    __table_args__ = (UniqueConstraint("task_id", "position", name="uq_task_images_task_position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    """Its place among the task's images (0 first), the order the model sees them in."""
    source: Mapped[str] = mapped_column(String(16))
    """upload, url or github."""
    url: Mapped[str | None] = mapped_column(String(2048))
    """Where it was fetched from (url, github); None for an upload."""
    media_type: Mapped[str | None] = mapped_column(String(32))
    """image/png, image/jpeg, image/gif or image/webp, from its first bytes (None until fetched)."""
    sha256: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer, default=0)
    data: Mapped[bytes | None] = mapped_column(LargeBinary)
    """The image itself (None: not fetched yet, or its fetch failed)."""
    error: Mapped[str | None] = mapped_column(Text)
    """Why a fetch failed (the task goes on without it)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
