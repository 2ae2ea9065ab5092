"""What the user sends while the agent works, as the messages appended to its history.

Steers go in at the next tool boundary, after the tool results of the step under way, so the history stays
append-only and the prefix cache warm. Queued messages wait until the model would finish; then its ``finish``
is answered "not yet", they follow (with any steer not yet given), and the run goes on in the same sandbox and
history. The loop reads them only through the :class:`~agent.base.Mailbox` it was handed, never the database.
"""

from __future__ import annotations

from typing import Any

from agent.base import LimitsExceeded, Mailbox
from agent.budget import Spend
from agent.prompts import queued_message, steer_message


def steers(mailbox: Mailbox, step: int) -> list[dict[str, Any]]:
    """The steers not yet given, as user messages for the request of model call ``step``."""
    return [
        {"role": "user", "content": steer_message(message.text, message.author)}
        for message in mailbox.take_steers(step)
    ]


def after_finish(mailbox: Mailbox, spend: Spend) -> list[dict[str, Any]]:
    """What the user sent that the model has not seen, when it calls ``finish``: the queued messages, then any
    steer not yet given, as user messages for the next model call. Empty: the run ends. Also empty when the
    budgets allow no further call, so a run that finished is not turned into one that ran out of steps: what
    waits is then dropped with the task's end, and says so."""
    try:
        spend.check_before_step()
    except LimitsExceeded:
        return []
    step = spend.steps + 1
    queued = [
        {"role": "user", "content": queued_message(message.text, message.author)}
        for message in mailbox.take_queued(step)
    ]
    return queued + steers(mailbox, step)
