"""The worker's side of GitHub: a reaction and a progress comment when a task starts, then — once the patch
is stored — its commit (the very one its mbox was made from) pushed to ``overnight/<task-id>-<slug>``, a
draft pull request, and the progress comment updated in place with the link (or the reason). Publishing
never changes how the task ended: a task whose push or pull request fails still succeeds with its patch
stored, and says so.

Tokens stay on the worker: git gets them as an HTTP header through the environment, never in a URL, a
remote, an event or a log line, and no sandbox exists while they are in use.
"""

from __future__ import annotations

import logging
import re

import git
from sqlalchemy.orm import Session, sessionmaker

import store.events
import store.github
import store.network
import store.patches
from overnight.events import PublishEvent
from overnight.github.client import GitHubClient
from overnight.github.errors import GitHubError
from overnight.github.markers import MARK, reaction_target
from overnight.images import ImageSettings
from overnight.network_report import markdown_section
from store.models import GitHubLink, TaskState
from worker.errors import PublishError, TaskFailure
from worker.github_attempts import attempts_section, best_of_note
from worker.images import fetch_issue_images
from worker.mirrors import credential_origin, git_env
from worker.repo import Commit

log = logging.getLogger(__name__)


class GitHubHooks:
    def __init__(
        self,
        client: GitHubClient,
        sessions: sessionmaker[Session],
        *,
        allow_local: bool,
        label: str = "overnight",
        draft: bool = True,
        public_url: str | None = None,
        images: ImageSettings | None = None,
    ) -> None:
        self.client, self.sessions, self.label = client, sessions, label
        self.allow_local, self.draft = allow_local, draft
        self.public_url = public_url.rstrip("/") if public_url else None
        self.images = images
        """Limits of the issue's images, fetched when a task starts (None or disabled: none are)."""

    def _link(self, task_id: str) -> GitHubLink | None:
        with self.sessions() as session:
            return store.github.get_link(session, task_id)

    def git_credentials(self, task_id: str, url: str) -> dict[str, str]:
        """{host or host:port: token} for cloning a GitHub task's repository over HTTPS (nothing for other
        tasks)."""
        link = self._link(task_id)
        origin = credential_origin(url)
        if link is None or origin is None:
            return {}
        try:
            return {origin: self.client.credentials.token(link.installation_id)}
        except GitHubError as exc:
            raise TaskFailure(f"clone failed: no GitHub token: {exc}") from exc

    def started(self, task_id: str) -> None:
        """👀 on what asked, the trigger label off (so labelling again asks again), a progress comment; the
        images the issue showed fetched with the token (worker/images.py)."""
        link = self._link(task_id)
        if link is None:
            return
        inst, repo = link.installation_id, link.repo
        try:
            self.client.react(inst, repo, reaction_target(link.source, link.number, link.trigger_comment_id), "eyes")
            comment_id = self.client.comment(inst, repo, link.number, self._body(task_id, "is working on this"))
            with self.sessions.begin() as session:
                store.github.get_link(session, task_id).progress_comment_id = comment_id  # type: ignore[union-attr]
            if link.source == "label":
                self.client.remove_label(inst, repo, link.number, self.label)
        except GitHubError as exc:  # the task runs anyway; its result is published at the end
            log.warning("task %s: could not acknowledge on %s#%s: %s", task_id, repo, link.number, exc)
            self._event(task_id, PublishEvent(state="acknowledge-failed", reason=str(exc)))
        if self.images is not None and self.images.enabled:
            failed = fetch_issue_images(self.sessions, task_id, token=lambda: self.client.credentials.token(inst),
                                        api_url=self.client.api_url, limits=self.images, repo=repo)  # fmt: skip
            if failed:  # said on the issue too: the task goes on without them
                reason = failed[0].replace("`", "'")[:300]  # a code span: no markup, no mention
                self._report(task_id, link, f"is working on this, without {len(failed)} image(s) of the issue that "
                             f"could not be fetched (`{reason}`)")  # fmt: skip

    def finished(self, task_id: str, state: TaskState, reason: str | None, commit: Commit | None) -> None:
        """Publish a succeeded task's patch (``commit``) and report any ending on the issue; never raises."""
        link = self._link(task_id)
        if link is None:
            return
        try:
            self._finish(task_id, link, state, reason, commit)
        except Exception as exc:  # publishing must not change how the task ended
            log.exception("task %s: publishing failed", task_id)
            self._failed(task_id, link, f"internal error: {type(exc).__name__}: {exc}")

    def _finish(
        self, task_id: str, link: GitHubLink, state: TaskState, reason: str | None, commit: Commit | None
    ) -> None:
        with self.sessions() as session:
            patch = store.patches.get_patch(session, task_id)
        if state is not TaskState.succeeded:
            what = f"could not finish this: {state.value}, {reason or 'no reason given'}."
            self._report(task_id, link, what + self._blocked_note(task_id))
            self._set(task_id, "skipped", None)
            return
        if patch is None or not patch.diff:
            self._report(task_id, link, "found that no changes are needed." + self._blocked_note(task_id))
            self._set(task_id, "skipped", None)
            return
        try:
            if commit is None:
                raise PublishError("no commit of the patch to push")
            self._push(link, commit, new_branch=link.pr_number is None)
            if link.pr_number is None:
                body = self._pull_body(task_id, patch.body, link.number)
                pull = self.client.create_pull(link.installation_id, link.repo, title=patch.title, head=link.branch,
                                               base=link.base_branch, body=body, draft=self.draft)  # fmt: skip
                with self.sessions.begin() as session:
                    row = store.github.get_link(session, task_id)
                    assert row is not None
                    row.pr_number, row.pr_url = pull.number, pull.html_url
                link.pr_number, link.pr_url = pull.number, pull.html_url
                message = f"opened {'a draft' if pull.draft else 'a'} pull request: {pull.html_url}"
                message += self._best_of(task_id)
            else:
                message = f"pushed a new commit to `{link.branch}` ({link.pr_url or f'#{link.pr_number}'})."
                message += self._blocked_note(task_id)  # the pull request's body is the first task's
        except (PublishError, GitHubError) as exc:
            self._failed(task_id, link, str(exc))
            return
        self._set(task_id, "published", None)
        self._event(task_id, PublishEvent(state="published", branch=link.branch, pull_request=link.pr_url))
        self._report(task_id, link, message)

    def _push(self, link: GitHubLink, commit: Commit, *, new_branch: bool) -> None:
        """The patch's commit, as made when the patch was stored, pushed to the task's branch from the task's own
        repository (the mirror names the remote)."""
        url = str(git.Repo(commit.mirror).git.config("--get", "remote.origin.url")).strip()
        token = self.client.credentials.token(link.installation_id)
        remote = git_env(allow_local=self.allow_local, credentials={credential_origin(url) or "": token}, url=url)
        args = ["--force"] if new_branch else []  # the branch is this task's own; follow-ups only fast-forward
        try:
            git.Git(str(commit.repository)).push(*args, "--", url, f"{commit.sha}:refs/heads/{link.branch}", env=remote)
        except git.GitCommandError as exc:
            raise PublishError(f"push to {link.branch} rejected: {_git_error(exc, token)}") from exc

    def _failed(self, task_id: str, link: GitHubLink, reason: str) -> None:
        log.warning("task %s: publishing failed: %s", task_id, reason)
        self._set(task_id, "failed", reason)
        self._event(task_id, PublishEvent(state="failed", reason=reason))
        self._report(task_id, link, f"finished, but could not publish the result: {reason}. "
                                    "The patch is stored with the task.")  # fmt: skip

    def _report(self, task_id: str, link: GitHubLink, what: str) -> None:
        body = self._body(task_id, what)
        with self.sessions() as session:
            comment_id = store.github.get_link(session, task_id).progress_comment_id  # type: ignore[union-attr]
        try:
            if comment_id is not None:
                self.client.update_comment(link.installation_id, link.repo, comment_id, body)
            else:
                self.client.comment(link.installation_id, link.repo, link.number, body)
        except GitHubError as exc:
            log.warning("task %s: could not report on %s#%s: %s", task_id, link.repo, link.number, exc)

    def _pull_body(self, task_id: str, text: str, number: int) -> str:
        """The agent's description, what it fixes, the hosts the sandbox's network policy refused (issue 18:
        why an install may have failed), a best-of-N task's attempts (the pull request is the best one's) and
        the task's address."""
        with self.sessions() as session:
            blocked = store.network.blocked_summary(session, task_id)
            attempts = attempts_section(session, task_id, public_url=self.public_url)
        section = markdown_section(blocked) if blocked else ""
        parts = [text.strip(), f"Fixes #{number}", section, attempts, self._task_line(task_id)]
        return "\n\n".join(part for part in parts if part)

    def _best_of(self, task_id: str) -> str:
        """What the progress comment adds for a task run as attempts: which one the pull request is."""
        with self.sessions() as session:
            return best_of_note(session, task_id)

    def _blocked_note(self, task_id: str) -> str:
        """The blocked hosts for a report that opens no pull request (a failed install is often why)."""
        with self.sessions() as session:
            blocked = store.network.blocked_summary(session, task_id)
        return f"\n\n{markdown_section(blocked)}" if blocked else ""

    def _body(self, task_id: str, what: str) -> str:
        return f"{MARK}\nOvernight {what}\n\n{self._task_line(task_id)}"

    def _task_line(self, task_id: str) -> str:
        if self.public_url:
            return f"Task [`{task_id}`]({self.public_url}/v1/tasks/{task_id})"
        return f"Task `{task_id}` (`overnight show {task_id}`)"

    def _set(self, task_id: str, state: str, error: str | None) -> None:
        with self.sessions.begin() as session:
            row = store.github.get_link(session, task_id)
            if row is not None:
                row.publish_state, row.publish_error = state, error

    def _event(self, task_id: str, event: PublishEvent) -> None:
        with self.sessions.begin() as session:
            store.events.append_event(session, task_id, event)


def _git_error(exc: git.GitCommandError, secret: str) -> str:
    """The telling lines of git's stderr (the "[remote rejected]" line and what the remote said, else the
    error), with no secret in them."""
    lines = [line.strip().strip("'").removeprefix("stderr: ").strip("'").strip() for line in
             str(exc.stderr or "").splitlines()]  # fmt: skip
    lines = [line for line in lines if line]
    rejected = [line.lstrip("! ").strip() for line in lines if re.search(r"\[(remote )?rejected\]", line)]
    remote = [line for line in lines if line.startswith("remote:")][:3]
    errors = [line for line in lines if line.lower().startswith(("fatal:", "error:"))]
    chosen = rejected[:1] + remote if rejected else (errors[:1] or lines[-1:] or ["git failed"])
    text = "; ".join(chosen)
    return text.replace(secret, "***") if secret else text
