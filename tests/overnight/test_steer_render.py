"""How `overnight logs` shows what became of a message sent to a running task."""

from __future__ import annotations

from overnight.cli.render import describe


def test_a_delivered_message_says_what_from_whom_and_at_which_step() -> None:
    line = describe({"type": "message_delivered", "data": {"message_id": 3, "mode": "steer", "step": 4,
                     "author": "alice", "text": "use the helper"}})  # fmt: skip
    assert line == "[magenta]✉ steer from alice delivered at step 4[/magenta]"
    queued = describe({"type": "message_delivered", "data": {"message_id": 4, "mode": "queue", "step": 9,
                       "author": "github:[bob]", "text": "then the docs"}})  # fmt: skip
    assert queued == r"[magenta]✉ queued message from github:\[bob] delivered at step 9[/magenta]"


def test_a_dropped_message_says_why() -> None:
    line = describe({"type": "message_dropped", "data": {"message_id": 5, "mode": "queue",
                     "reason": "the task ended before it was delivered: failed ([x])"}})  # fmt: skip
    assert line == r"[yellow]✉ message 5 dropped[/yellow]: the task ended before it was delivered: failed (\[x])"
