"""POST /v1/github/webhook: a labelled issue or a command in a comment becomes a task.

The signature is checked over the raw body before anything is parsed; the answer comes well inside GitHub's
ten seconds (the work is enqueued, never done here). 202: a task was queued, or a command comment on an issue
whose task has not ended was passed to that task as a steer; 200: a ping, an installation
change, a redelivery or a replay of a request already made (nothing new started); 204: a delivery that asks
for nothing, or from someone without write access (logged with the reason); 503: GitHub could not be asked
about the sender (nothing recorded, so a redelivery is decided afresh).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Header, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

import store.bestof
import store.github
import store.images
import store.messages
import store.tasks
from api.errors import APIError
from api.queueing import enqueue_or_fail
from api.schemas import MAX_INSTRUCTION_BYTES, MAX_MESSAGE_BYTES, ErrorResponse
from overnight.github.client import GitHubClient
from overnight.github.errors import GitHubError
from overnight.github.images import issue_image_urls
from overnight.github.markers import reaction_target
from overnight.github.webhooks import (
    Delivery,
    PayloadError,
    Rules,
    branch_name,
    instruction_for,
    may_trigger,
    parse,
    request_key,
    request_of,
    signature_valid,
    steer_text,
)
from overnight.github.webhooks import (
    Request as TriggerRequest,
)
from overnight.repourl import InvalidRepoError, validate_repo_url
from overnight.settings import Settings
from store.messages import TaskEnded

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/github", tags=["github"])
_DELIVERY_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_EVENT = re.compile(r"^[a-z_]{1,64}$")
UNAUTHORISED_REPLY = (
    "Thanks for the request, @{login}. Only people with write access to this repository can start "
    "Overnight tasks, so nothing was started."
)


@router.post(
    "/webhook",
    status_code=202,
    responses={
        202: {"description": "A task was queued, or a command on an issue whose task runs steered it."},
        200: {"description": "Ping, installation change, redelivery or replay: nothing new started."},
        204: {"description": "Not a trigger, or from someone without write access (logged)."},
        400: {"model": ErrorResponse, "description": "Missing headers or a payload GitHub would not send."},
        401: {"model": ErrorResponse, "description": "Missing or wrong signature, or no secret configured."},
        413: {"model": ErrorResponse, "description": "Over OVERNIGHT_GITHUB_WEBHOOK_MAX_BODY_BYTES."},
        500: {"model": ErrorResponse, "description": "The server's GitHub clone address is unusable (see doctor)."},
        503: {"model": ErrorResponse, "description": "GitHub could not be asked who the sender is; nothing recorded."},
    },
)
async def receive_webhook(
    request: Request,
    background: BackgroundTasks,
    x_hub_signature_256: str | None = Header(default=None),
    x_github_event: str | None = Header(default=None),
    x_github_delivery: str | None = Header(default=None),
) -> Response:
    settings: Settings = request.app.state.settings
    if settings.github.webhook_secret is None:
        log.error("refused a GitHub delivery: OVERNIGHT_GITHUB_WEBHOOK_SECRET is not set, so none can be verified")
        raise APIError(401, "webhook_secret_unset", "this server has no GitHub webhook secret configured")
    if not (x_hub_signature_256 or "").startswith("sha256="):  # refused before a byte of the body is read
        log.warning("refused GitHub delivery %s: no X-Hub-Signature-256", x_github_delivery)
        raise APIError(401, "bad_signature", "missing or wrong X-Hub-Signature-256")
    body = await request.body()  # at most OVERNIGHT_GITHUB_WEBHOOK_MAX_BODY_BYTES (api.limits counts it)
    secret = settings.github.webhook_secret.get_secret_value().encode()
    if not signature_valid(secret, body, x_hub_signature_256):
        log.warning("refused GitHub delivery %s: missing or wrong X-Hub-Signature-256", x_github_delivery)
        raise APIError(401, "bad_signature", "missing or wrong X-Hub-Signature-256")
    if not x_github_event or not _EVENT.match(x_github_event):
        raise APIError(400, "bad_delivery", "missing or malformed X-GitHub-Event")
    if not x_github_delivery or not _DELIVERY_ID.match(x_github_delivery):
        raise APIError(400, "bad_delivery", "missing or malformed X-GitHub-Delivery")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise APIError(400, "bad_payload", f"the body is not JSON: {exc}") from exc
    status, content, reply = await run_in_threadpool(
        _handle, request.app.state, settings, x_github_event, x_github_delivery, payload
    )
    if reply is not None:  # after the answer: GitHub's ten seconds are not spent on it
        background.add_task(_reply if len(reply) == 4 else _react, request.app.state.github, *reply)
    if status == 204:
        return Response(status_code=204, background=background)
    return JSONResponse(content, status_code=status, background=background)


Reply = tuple[int | None, str, int, str] | tuple[int | None, str, str]
"""A comment to write (installation, repo, number, body), or a reaction to make (installation, repo, target)."""
Outcome = tuple[int, dict[str, Any], Reply | None]


@dataclass
class _Recorder:
    """Writes a delivery's outcome once (with what it asked for, so a replay under a new id finds it)."""

    session: Any
    delivery_id: str
    event: str
    action: str | None
    request_key: str | None = None

    def done(self, status: int, outcome: str, task_id: str | None = None, reply: Reply | None = None) -> Outcome:
        try:
            store.github.record_delivery(self.session, self.delivery_id, event=self.event, action=self.action,
                                         outcome=outcome, task_id=task_id, request_key=self.request_key)  # fmt: skip
            self.session.commit()
        except IntegrityError:  # the same delivery, or the same request, handled concurrently
            self.session.rollback()
            return 200, {"status": "duplicate", "delivery": self.delivery_id}, None
        log.info("GitHub delivery %s (%s.%s): %s", self.delivery_id, self.event, self.action, outcome)
        content = {"status": outcome.split(":")[0], "delivery": self.delivery_id, "detail": outcome}
        return status, {**content, "task_id": task_id} if task_id else content, reply


def _handle(state: Any, settings: Settings, event: str, delivery_id: str, payload: Any) -> Outcome:
    action = payload.get("action") if isinstance(payload, dict) else None
    action = action if isinstance(action, str) else None
    with state.sessions() as session:
        if store.github.delivery_seen(session, delivery_id):
            log.info("GitHub delivery %s seen before; nothing new started", delivery_id)
            return 200, {"status": "duplicate", "delivery": delivery_id}, None
        record = _Recorder(session, delivery_id, event, action)
        if event == "ping":
            return record.done(200, "pong")
        try:
            delivery = parse(event, payload)
        except PayloadError as exc:
            raise APIError(400, "bad_payload", str(exc)) from exc
        if event in ("installation", "installation_repositories"):
            _record_installation(session, delivery)
            return record.done(200, f"recorded: installation {action}")
        rules = Rules(label=settings.github.trigger_label, command=settings.github.command,
                      associations=frozenset(settings.github.allowed_associations),
                      pr_comments_need_command=settings.github.pr_comments_need_command)  # fmt: skip
        asked = request_of(event, delivery, rules)
        if isinstance(asked, str):
            return record.done(204, f"ignored: {asked}")
        if asked.source not in settings.github.triggers:
            return record.done(204, f"ignored: the {asked.source} trigger is off (OVERNIGHT_GITHUB_TRIGGERS)")
        if asked.comment_id is not None and store.github.is_progress_comment(session, asked.comment_id):
            return record.done(204, "ignored: Overnight's own progress comment")
        record.request_key = request_key(event, delivery)
        first = store.github.delivery_asking(session, record.request_key) if record.request_key else None
        if first is not None:
            record.request_key = None  # the key stays with the delivery that asked first
            return record.done(200, f"duplicate: delivery {first} asked for the same")
        return _decide(state, settings, record, delivery, asked, rules)


def _decide(
    state: Any, settings: Settings, record: _Recorder, delivery: Delivery, asked: TriggerRequest, rules: Rules
) -> Outcome:
    """Where, who and what for a delivery that asks for work: a queued task, or why not."""
    session = record.session
    why_not = _repository_refused(session, state.github, settings, delivery, asked)
    if why_not:
        return record.done(204, f"ignored: {why_not}")
    installation = delivery.installation.id if delivery.installation else None
    refused = _sender_refused(state.github, installation, asked, rules)
    if refused:
        reply = None
        if settings.github.reply_unauthorised:
            reply = (installation, asked.repo, asked.number, UNAUTHORISED_REPLY.format(login=asked.sender))
        return record.done(204, f"refused: {refused}", reply=reply)
    if asked.refusal is not None:  # attempts=N out of range: said to the one who asked, nothing started
        reply = (installation, asked.repo, asked.number, f"@{asked.sender}: {asked.refusal}; nothing was started.")
        return record.done(204, f"refused: {asked.refusal}", reply=reply)
    if asked.source == "issue-comment":
        steered = _steer_live_task(session, settings, asked, record, installation)
        if steered is not None:
            return steered
    parent = None
    if asked.on_pull_request:
        parent = store.github.link_of_pull_request(session, asked.repo, asked.number)
        if parent is None:
            return record.done(204, "ignored: a pull request Overnight did not open")
    task_id, runs = _create_task(session, settings, asked, installation, parent)
    outcome = record.done(202, "queued", task_id)
    if outcome[0] == 202:
        for run in runs:
            enqueue_or_fail(session, state.queue, run)
    return outcome


def _steer_live_task(
    session: Any, settings: Settings, asked: TriggerRequest, record: _Recorder, installation: int | None
) -> Outcome | None:
    """A command comment on an issue whose task has not ended: the comment goes to that task as a steer (👀 on
    it once passed on) instead of starting a second task. None: no such task, so a task is started."""
    task_id = store.github.live_task_of_issue(session, asked.repo, asked.number)
    if task_id is None:
        return None
    live = store.tasks.get_task(session, task_id)
    if live is not None and store.bestof.has_attempts(live):  # N agents: no one of them is "the" task to steer
        reply = (installation, asked.repo, asked.number, f"@{asked.sender}: task `{task_id}` runs {live.attempts} "
                 "attempts, so a comment cannot steer it; nothing was started or sent. Send a message to one "
                 f"attempt with `overnight say` (`overnight show {task_id}` lists them).")  # fmt: skip
        return record.done(204, f"ignored: task {task_id} runs {live.attempts} attempts (a comment cannot steer them)",
                           task_id, reply=reply)  # fmt: skip
    text = steer_text(asked, settings.github.command)
    if text is None:
        return record.done(204, f"ignored: task {task_id} is still running on this issue and the comment says "
                           "nothing more")  # fmt: skip
    user = store.github.github_user(session, asked.sender)
    try:
        message = store.messages.add_message(
            session, task_id, mode="steer", text=text.encode()[:MAX_MESSAGE_BYTES].decode(errors="ignore"),
            author=user.name, user_id=user.id,
        )  # fmt: skip
    except TaskEnded:  # it ended meanwhile: the comment starts a task of its own
        return None
    reaction = (installation, asked.repo, reaction_target(asked.source, asked.number, asked.comment_id))
    return record.done(202, f"steered: message {message.id} to task {task_id}", task_id, reply=reaction)


def _sender_refused(client: GitHubClient, installation: int | None, asked: TriggerRequest, rules: Rules) -> str | None:
    """Why whoever labelled or commented may not start a task (None: they have write access). The comment's
    author_association filters first, for free; GitHub's collaborator-permission API decides (cached briefly).
    GitHub unreachable: 503 and nothing recorded, so a redelivery is decided afresh."""
    if not may_trigger(asked, rules):
        return f"@{asked.sender} ({asked.association}) may not trigger"
    try:
        found = client.permission(installation, asked.repo, asked.sender)
    except GitHubError as exc:
        log.warning("could not check @%s's permission on %s: %s", asked.sender, asked.repo, exc)
        raise APIError(503, "github_unavailable", f"could not check @{asked.sender}'s permission: {exc}") from exc
    if not found.may_write:
        role = f" (role {found.role_name})" if found.role_name and found.role_name != found.permission else ""
        return (f"@{asked.sender} may not start tasks on {asked.repo}: GitHub reports {found.permission} "
                f"permission{role}; write, maintain or admin is needed")  # fmt: skip
    return None


def _record_installation(session: Any, delivery: Delivery) -> None:
    installation = delivery.installation
    if installation is None:
        raise APIError(400, "bad_payload", "an installation event without installation")
    if delivery.action == "deleted":
        store.github.delete_installation(session, installation.id)
    else:
        account = installation.account.login if installation.account else ""
        store.github.save_installation(session, installation.id, account=account,
                                       suspended=delivery.action == "suspend")  # fmt: skip


def _repository_refused(
    session: Any, client: GitHubClient | None, settings: Settings, delivery: Delivery, asked: TriggerRequest
) -> str | None:
    """Why this repository may not start tasks (None: it may)."""
    if client is None:
        return "GitHub is not configured (no App id and key, and no token): cannot publish results"
    if not client.credentials.app_mode:
        allowed = {name.lower() for name in settings.github.repositories}
        if allowed and asked.repo.lower() not in allowed:
            return f"{asked.repo} is not in OVERNIGHT_GITHUB_REPOSITORIES"
        return None
    if delivery.installation is None:
        return "the delivery names no App installation"
    installation_id = delivery.installation.id
    if store.github.installation_known(session, installation_id):
        return None
    try:  # installed before this server listened: ask GitHub once, then remember
        found = client.installation(installation_id)
    except GitHubError as exc:
        log.warning("could not look up installation %s: %s", installation_id, exc)
        return f"installation {installation_id} could not be checked"
    if found is None or found.get("suspended_at"):
        return f"installation {installation_id} is not an installation of this App"
    account = (found.get("account") or {}).get("login", "")
    store.github.save_installation(session, installation_id, account=str(account))
    return None


def _create_task(
    session: Any, settings: Settings, asked: TriggerRequest, installation: int | None, parent: Any
) -> tuple[str, list[str]]:
    """The task (its pull request is published from it) and the ids the workers run: its own, or those of its
    attempts when the command asked for more than one (``attempts=N``)."""
    try:
        repo_url = validate_repo_url(f"{settings.github.git_base}/{asked.repo}.git",
                                     allow_local=settings.allow_local_repos)  # fmt: skip
    except InvalidRepoError as exc:  # the payload's name is checked already: the configured base is at fault
        log.error("GitHub tasks cannot be created: the clone address %s/%s.git is refused: %s",
                  settings.github.git_base, asked.repo, exc)  # fmt: skip
        raise APIError(500, "github_misconfigured", "this server's GitHub clone address is not usable; "
                            "see `overnight doctor`") from exc  # fmt: skip
    instruction = instruction_for(asked).encode()[:MAX_INSTRUCTION_BYTES].decode(errors="ignore")
    user = store.github.github_user(session, asked.sender)
    task = store.tasks.create_task(
        session, repo=repo_url, ref=parent.branch if parent else asked.default_branch, instruction=instruction,
        user_id=user.id, parent_id=parent.task_id if parent else None,
    )  # fmt: skip
    store.github.create_link(
        session, task_id=task.id, repo=asked.repo, installation_id=installation, number=asked.number,
        source=asked.source, sender=asked.sender, trigger_comment_id=asked.comment_id,
        branch=parent.branch if parent else branch_name(task.id, asked.title),
        base_branch=parent.base_branch if parent else asked.default_branch,
        pr_number=parent.pr_number if parent else None, pr_url=parent.pr_url if parent else None,
    )  # fmt: skip
    if settings.images.enabled:  # the worker fetches them: it has the installation token private images need
        urls = issue_image_urls(
            settings.github.api_url, asked.text, asked.comment, limit=settings.images.max_per_task, repo=asked.repo
        )
        store.images.add_pending(session, task.id, urls)
    if asked.attempts > 1:
        return task.id, [attempt.id for attempt in store.bestof.add_attempts(session, task, asked.attempts)]
    return task.id, [task.id]


def _react(client: GitHubClient, installation: int | None, repo: str, target: str) -> None:
    try:
        client.react(installation, repo, target, "eyes")
    except GitHubError as exc:
        log.warning("could not react to %s on %s: %s", target, repo, exc)


def _reply(client: GitHubClient, installation: int | None, repo: str, number: int, body: str) -> None:
    try:
        client.comment(installation, repo, number, body)
    except GitHubError as exc:
        log.warning("could not answer on %s#%s: %s", repo, number, exc)
