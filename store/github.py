"""The queries of the GitHub integration: deliveries seen, installations known, and task links."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import FINAL_STATES, GitHubDelivery, GitHubInstallation, GitHubLink, Task, User

USER_PREFIX = "github:"


def delivery_seen(session: Session, delivery_id: str) -> bool:
    return session.get(GitHubDelivery, delivery_id) is not None


def record_delivery(
    session: Session,
    delivery_id: str,
    *,
    event: str,
    action: str | None,
    outcome: str,
    task_id: str | None = None,
    request_key: str | None = None,
) -> None:
    """Remember a delivery (the caller's commit fails on a key if another request recorded it, or the same
    request under another delivery id, first)."""
    session.add(GitHubDelivery(id=delivery_id, event=event, action=action, outcome=outcome[:255], task_id=task_id,
                               request_key=request_key))  # fmt: skip
    session.flush()


def delivery_asking(session: Session, request_key: str) -> str | None:
    """The id of the delivery that already asked for ``request_key`` (None: nobody has)."""
    return session.scalar(select(GitHubDelivery.id).where(GitHubDelivery.request_key == request_key))


def is_progress_comment(session: Session, comment_id: int) -> bool:
    """Whether ``comment_id`` is one of Overnight's own progress comments."""
    found = session.scalar(select(GitHubLink.task_id).where(GitHubLink.progress_comment_id == comment_id).limit(1))
    return found is not None


def installation_known(session: Session, installation_id: int) -> bool:
    row = session.get(GitHubInstallation, installation_id)
    return row is not None and not row.suspended


def save_installation(session: Session, installation_id: int, *, account: str, suspended: bool = False) -> None:
    row = session.get(GitHubInstallation, installation_id)
    if row is None:
        row = GitHubInstallation(id=installation_id)
        session.add(row)
    row.account, row.suspended = account, suspended
    session.flush()


def delete_installation(session: Session, installation_id: int) -> None:
    row = session.get(GitHubInstallation, installation_id)
    if row is not None:
        session.delete(row)
        session.flush()


def github_user(session: Session, login: str) -> User:
    """The user a GitHub account's tasks belong to (``github:LOGIN``; it has no API token of its own)."""
    name = f"{USER_PREFIX}{login}"[:64]
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        user = User(name=name)
        session.add(user)
        session.flush()
    return user


def create_link(session: Session, **fields: object) -> GitHubLink:
    link = GitHubLink(**fields)
    session.add(link)
    session.flush()
    return link


def get_link(session: Session, task_id: str) -> GitHubLink | None:
    return session.get(GitHubLink, task_id)


def live_task_of_issue(session: Session, repo: str, number: int) -> str | None:
    """The newest task started from issue ``number`` of ``repo`` (a label or a command on it) that has not
    ended, or None."""
    return session.scalar(
        select(Task.id)
        .join(GitHubLink, GitHubLink.task_id == Task.id)
        .where(
            GitHubLink.repo == repo,
            GitHubLink.number == number,
            GitHubLink.source.in_(["label", "issue-comment"]),
            Task.state.not_in([state.value for state in FINAL_STATES]),
        )
        .order_by(Task.created_at.desc())
        .limit(1)
    )


def link_of_pull_request(session: Session, repo: str, number: int) -> GitHubLink | None:
    """The newest task linked to pull request ``number`` of ``repo`` that Overnight opened."""
    return session.scalars(
        select(GitHubLink)
        .join(Task, Task.id == GitHubLink.task_id)
        .where(GitHubLink.repo == repo, GitHubLink.pr_number == number)
        .order_by(Task.created_at.desc())
        .limit(1)
    ).first()
