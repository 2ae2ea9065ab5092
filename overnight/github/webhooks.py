"""Webhook deliveries: the signature check (before anything is parsed), typed payloads, and what a delivery
asks for. Issue and comment text is untrusted: it only ever becomes the task's instruction."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from overnight.github.markers import MARK, reaction_target

MAX_BODY_BYTES = 25 * 2**20
"""GitHub caps a delivery at 25 MB."""
MAX_TEXT = 24_000
"""Characters of an issue or comment that go into an instruction (the API's limit is 32 KiB)."""
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_valid(secret: bytes, body: bytes, header: str | None) -> bool:
    """Constant-time check of ``X-Hub-Signature-256`` against the raw body."""
    if not header or not header.startswith("sha256="):
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Account(_Model):
    login: str = Field(min_length=1, max_length=100)
    type: str = "User"


class Repository(_Model):
    full_name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")
    default_branch: str = Field(default="main", min_length=1, max_length=255)


class Installation(_Model):
    id: int = Field(gt=0)
    account: Account | None = None


class Label(_Model):
    name: str


class Issue(_Model):
    number: int = Field(gt=0)
    title: str = ""
    body: str | None = None
    user: Account | None = None
    pull_request: dict[str, Any] | None = None
    """Present only when the issue is a pull request."""
    updated_at: str | None = None
    """Moves when a label is added: what tells a new labelling from a replay of the old one."""


class Comment(_Model):
    id: int = Field(gt=0)
    body: str | None = None
    user: Account
    author_association: str = "NONE"
    performed_via_github_app: dict[str, Any] | None = None
    path: str | None = None
    line: int | None = None
    diff_hunk: str | None = None


class Branch(_Model):
    ref: str


class PullRequest(_Model):
    number: int = Field(gt=0)
    title: str = ""
    head: Branch
    base: Branch


class Delivery(_Model):
    action: str | None = None
    repository: Repository | None = None
    installation: Installation | None = None
    sender: Account | None = None
    issue: Issue | None = None
    comment: Comment | None = None
    label: Label | None = None
    pull_request: PullRequest | None = None
    zen: str | None = None
    repositories_added: list[dict[str, Any]] = Field(default_factory=list)


class PayloadError(ValueError):
    """The body is not a GitHub delivery of the event it says it is."""


def parse(event: str, payload: Any) -> Delivery:
    if not isinstance(payload, dict):
        raise PayloadError("the payload is not a JSON object")
    try:
        delivery = Delivery.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise PayloadError(f"not a GitHub {event} payload: {where}: {first['msg']}") from exc
    needs = {"issues": ("issue",), "issue_comment": ("issue", "comment"),
             "pull_request_review_comment": ("pull_request", "comment")}.get(event, ())  # fmt: skip
    for name in (*needs, "repository") if needs else ():
        if getattr(delivery, name) is None:
            raise PayloadError(f"not a GitHub {event} payload: {name} is missing")
    return delivery


@dataclass(frozen=True, kw_only=True)
class Rules:
    label: str
    command: str
    associations: frozenset[str]
    pr_comments_need_command: bool = True
    """False: any comment on a pull request Overnight opened asks for a follow-up (the command is optional)."""


@dataclass(frozen=True, kw_only=True)
class Request:
    """A delivery that asks for work, before anyone checked who asked or where."""

    source: Literal["label", "issue-comment", "pr-comment", "review-comment"]
    repo: str
    default_branch: str
    number: int
    """The issue's or pull request's number."""
    sender: str
    association: str | None
    """author_association of the comment; None for a label (labelling already takes triage access)."""
    comment_id: int | None
    extra: str
    """The rest of the command's line."""
    title: str
    text: str
    """The issue's body, or the comment's."""
    review_context: str | None = None
    pr_head: str | None = None
    comment: str | None = None
    """The comment's own text (comments only)."""
    attempts: int = 1
    """Best-of-N: how many attempts the command asked for (``attempts=N`` after it; 1 without)."""
    refusal: str | None = None
    """Why the command's options cannot be followed (an ``attempts=`` out of range): nothing is started, and the
    person who asked is told (once they are known to have write access)."""

    @property
    def on_pull_request(self) -> bool:
        return self.source in ("pr-comment", "review-comment")

    @property
    def reaction_target(self) -> str:
        return reaction_target(self.source, self.number, self.comment_id)


def command_line(body: str | None, command: str) -> str | None:
    """The rest of the first line when ``body`` starts with ``command`` (as a word), else None."""
    text = (body or "").lstrip()
    if not text.lower().startswith(command.lower()):
        return None
    rest = text[len(command) :]
    if rest and not rest[0].isspace():
        return None  # "/overnightly" is not the command
    return rest.split("\n", 1)[0].strip()


MAX_ATTEMPTS = 8
"""The most attempts a command may ask for (the API's bound too)."""
_ATTEMPTS = re.compile(r"attempts=(\S*)", re.IGNORECASE)


def command_options(extra: str) -> tuple[int, str | None, str]:
    """(attempts, why they cannot be, the rest) of a command's line: ``attempts=N`` as its first word asks for N
    attempts, from 1 to :data:`MAX_ATTEMPTS`; without it, 1."""
    words = extra.split(None, 1)
    found = _ATTEMPTS.fullmatch(words[0]) if words else None
    if found is None:
        return 1, None, extra
    rest = words[1] if len(words) > 1 else ""
    value = found.group(1)
    if not value.isdigit() or not 1 <= int(value) <= MAX_ATTEMPTS:
        return 1, f"attempts must be a number from 1 to {MAX_ATTEMPTS}, not {value[:20]!r}", rest
    return int(value), None, rest


def request_of(event: str, delivery: Delivery, rules: Rules) -> Request | str:
    """What ``delivery`` asks for, or why it asks for nothing (a line for the log)."""
    sender = delivery.sender
    if sender is not None and (sender.type == "Bot" or sender.login.endswith("[bot]")):
        return f"sent by a bot ({sender.login})"
    repo = delivery.repository
    if repo is None:
        return f"{event} without a repository"
    if event == "issues":
        assert delivery.issue is not None
        if delivery.action != "labeled":
            return f"issues.{delivery.action} is not a trigger"
        if delivery.label is None or delivery.label.name.lower() != rules.label.lower():
            label = delivery.label.name if delivery.label else None
            return f"label {label!r} is not the trigger label {rules.label!r}"
        issue = delivery.issue
        return Request(
            source="label", repo=repo.full_name, default_branch=repo.default_branch, number=issue.number,
            sender=sender.login if sender else "unknown", association=None, comment_id=None, extra="",
            title=issue.title, text=issue.body or "",
        )  # fmt: skip
    if event in ("issue_comment", "pull_request_review_comment"):
        comment = delivery.comment
        assert comment is not None
        if delivery.action != "created":
            return f"{event}.{delivery.action} is not a trigger"
        if comment.performed_via_github_app is not None:
            return "a comment made by a GitHub App"
        if MARK in (comment.body or ""):
            return f"a comment Overnight wrote (it carries {MARK})"
        extra = command_line(comment.body, rules.command)
        on_pull_request = event == "pull_request_review_comment" or bool(delivery.issue and delivery.issue.pull_request)
        if extra is None and (
            rules.pr_comments_need_command or not on_pull_request or not (comment.body or "").strip()
        ):
            return f"the comment does not start with {rules.command}"
        attempts, refusal, extra = command_options(extra or "")
        if event == "issue_comment":
            assert delivery.issue is not None
            issue = delivery.issue
            source: Literal["issue-comment", "pr-comment"] = "pr-comment" if issue.pull_request else "issue-comment"
            return Request(
                source=source, repo=repo.full_name, default_branch=repo.default_branch, number=issue.number,
                sender=comment.user.login, association=comment.author_association, comment_id=comment.id,
                extra=extra, title=issue.title, text=(comment.body or "") if issue.pull_request else (issue.body or ""),
                comment=comment.body or "", attempts=attempts, refusal=refusal,
            )  # fmt: skip
        pull = delivery.pull_request
        assert pull is not None
        context = f"{comment.path}, line {comment.line}" if comment.path else None
        if context and comment.diff_hunk:
            context += "\n```diff\n" + comment.diff_hunk[-4000:] + "\n```"
        return Request(
            source="review-comment", repo=repo.full_name, default_branch=repo.default_branch, number=pull.number,
            sender=comment.user.login, association=comment.author_association, comment_id=comment.id, extra=extra,
            title=pull.title, text=comment.body or "", review_context=context, pr_head=pull.head.ref,
            attempts=attempts, refusal=refusal,
        )  # fmt: skip
    return f"{event} is not a trigger"


def may_trigger(request: Request, rules: Rules) -> bool:
    """The first, free filter on a comment's ``author_association``; the collaborator-permission API decides."""
    return request.association is None or request.association.upper() in rules.associations


def request_key(event: str, delivery: Delivery) -> str | None:
    """What a triggering delivery asks for, as a key that the same payload replayed under a new
    ``X-GitHub-Delivery`` keeps (that header is not signed; the body is) and a genuine new request changes: the
    comment's id, or the labelled issue with the label and the issue's ``updated_at`` (moved by the labelling).
    None when the payload holds nothing that tells requests apart."""
    repo = delivery.repository.full_name.lower() if delivery.repository else ""
    if event in ("issue_comment", "pull_request_review_comment") and delivery.comment is not None:
        parts = [event, str(delivery.action), repo, str(delivery.comment.id)]
    elif event == "issues" and delivery.issue is not None and delivery.label is not None:
        if not delivery.issue.updated_at:
            return None
        parts = [event, str(delivery.action), repo, str(delivery.issue.number), delivery.label.name.lower(),
                 delivery.issue.updated_at]  # fmt: skip
    else:
        return None
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _clean(text: str) -> str:
    """Hidden HTML comments out (text a reader of the issue never sees), and a length cap."""
    cleaned = _HTML_COMMENT.sub("", text).strip()
    return cleaned if len(cleaned) <= MAX_TEXT else cleaned[:MAX_TEXT] + "\n[... truncated ...]"


def instruction_for(request: Request) -> str:
    """The task's instruction. The issue's words are the task as written by its author, quoted as such."""
    extra = f"\n\nAdditional instructions from @{request.sender}: {_clean(request.extra)}" if request.extra else ""
    if not request.on_pull_request:
        return (
            f"Resolve issue #{request.number} of the GitHub repository {request.repo}.\n\n"
            f"Issue title: {_clean(request.title)}\n\nIssue description:\n{_clean(request.text) or '(empty)'}" + extra
        )
    where = f"\n\nThe comment is on {request.review_context}" if request.review_context else ""
    return (
        f"The branch checked out is pull request #{request.number} ({_clean(request.title)}) of {request.repo}, "
        f"made by you in an earlier task. @{request.sender} asked for a change in this comment:\n\n"
        f"{_clean(request.text)}{where}\n\nMake the change on top of the branch as it is."
    )


def steer_text(request: Request, command: str) -> str | None:
    """What a command comment on an issue whose task is still running tells that task: the comment without
    the command, said to come from its author (None when nothing is left to say)."""
    text = _clean(request.comment or "")
    if text.lower().startswith(command.lower()):
        text = text[len(command) :].strip()
        first = text.split(None, 1)
        if first and _ATTEMPTS.fullmatch(first[0]):  # an option for a new task, not words for this one
            text = first[1].strip() if len(first) > 1 else ""
    if not text:
        return None
    return f"@{request.sender} commented on issue #{request.number}:\n\n{text}"


_SLUG = re.compile(r"[^a-z0-9]+")


def branch_name(task_id: str, title: str) -> str:
    """``overnight/<task-id>-<slug>``: only [a-z0-9-] from the (untrusted) title, at most 40 of them."""
    slug = _SLUG.sub("-", title.lower()).strip("-")[:40].rstrip("-")
    return f"overnight/{task_id}-{slug}" if slug else f"overnight/{task_id}"
