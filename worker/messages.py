"""The mailbox the worker hands the agent: the task's messages in the database (``store/messages.py``), read
through the attempt, so a message is marked delivered by a fenced write (a superseded attempt takes none) in
the same transaction as its ``message_delivered`` event."""

from __future__ import annotations

from sqlalchemy.orm import Session

import store.messages
from agent.base import UserMessage
from store.messages import MessageMode
from worker.attempt import Attempt


class TaskMailbox:
    """What the task's user sent while it runs (an :class:`agent.base.Mailbox`)."""

    def __init__(self, attempt: Attempt) -> None:
        self.attempt = attempt

    def take_steers(self, step: int) -> list[UserMessage]:
        return self._take("steer", step)

    def take_queued(self, step: int) -> list[UserMessage]:
        return self._take("queue", step)

    def _take(self, mode: MessageMode, step: int) -> list[UserMessage]:
        task_id = self.attempt.task_id
        # A read first: asked before every model call, the answer is nearly always "none", which needs no lock.
        if not self.attempt.read(lambda session: store.messages.pending_count(session, task_id, mode)):
            return []

        def deliver(session: Session) -> list[UserMessage]:
            delivered = store.messages.deliver_pending(session, task_id, mode=mode, step=step)
            return [UserMessage(text=message.text, author=message.author) for message in delivered]

        return self.attempt.write(deliver)
